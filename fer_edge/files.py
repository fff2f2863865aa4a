"""Finding the image files to classify, and naming them safely in output.

Rules (also in the README and ``fer-edge classify --help``):

* A file named explicitly is always attempted, whatever its extension, and
  reported if it fails.
* A folder is walked recursively in name order. Inside it, files whose
  extension is not an image extension Pillow can decode
  (:data:`IMAGE_EXTENSIONS`) and hidden entries (name starting with ``.``,
  e.g. macOS ``._IMG.jpg`` resource forks) are skipped and counted, not
  reported as failures.
* Symbolic links are followed, but a folder already visited (a symlink loop,
  or two links to one folder) is walked only once.
* A folder that cannot be listed, and a link with an image extension that
  points nowhere, are failures: they are named, never dropped silently.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("b.png", "a.JPG", "notes.txt"):
    ...     _ = (d / name).write_bytes(b"")
    >>> scan = find_images([d])
    >>> [p.name for p in scan.files], len(scan.skipped)
    (['a.JPG', 'b.png'], 1)
"""

from __future__ import annotations

import inspect
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

from PIL import Image, ImageFile

PathArg = Union[str, "os.PathLike[str]"]

# Pillow registers these extensions but cannot decode pixels from them without
# extra programs (Ghostscript) or at all (MPEG video): not photos to classify.
_NOT_PHOTOS = {".eps", ".ps", ".mpeg", ".mpg"}


def _readable_extensions() -> frozenset[str]:
    """Extensions of formats Pillow can open and decode."""
    Image.init()

    def decodes(fmt: str) -> bool:
        factory = Image.OPEN.get(fmt, (None,))[0]
        if factory is None:
            return False
        # Stub plugins (HDF5, GRIB, BUFR) identify files but cannot decode them.
        return not (inspect.isclass(factory) and issubclass(factory, ImageFile.StubImageFile))

    exts = {ext.lower() for ext, fmt in Image.registered_extensions().items() if decodes(fmt)}
    return frozenset(exts - _NOT_PHOTOS)


#: Lower-case extensions (with the dot) that a folder walk picks up.
IMAGE_EXTENSIONS: frozenset[str] = _readable_extensions()


def printable(text: str) -> str:
    """``text`` made safe to write as UTF-8: undecodable bytes become ``\\xNN``.

    File names that are not valid UTF-8 reach Python as lone surrogates
    (PEP 383); writing those to a UTF-8 file or terminal would crash.

    Example:
        >>> printable(os.fsdecode(b"caf\\xe9.jpg"))
        'caf\\\\xe9.jpg'
    """
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        # Surrogates that did not come from undecodable bytes: escape them as-is.
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def display_path(path: PathArg | bytes) -> str:
    """The path as a printable string (see :func:`printable`)."""
    return printable(os.fsdecode(path))


def is_image_name(path: PathArg) -> bool:
    """Whether the file name has an image extension (case-insensitive).

    Example:
        >>> is_image_name("x/IMG_1.JPG"), is_image_name("notes.txt")
        (True, False)
    """
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


@dataclass
class Scan:
    """What :func:`find_images` found.

    Attributes:
        files: Files to classify, in order (explicit ones where given, folder
            contents sorted by name).
        failures: ``(path, reason)`` for inputs that could not be listed.
        skipped: Files in folders skipped for their extension or for being hidden.
        revisits: Folders reached again through symbolic links and not re-walked.
    """

    files: list[Path] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    revisits: list[Path] = field(default_factory=list)


def _dir_key(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def _walk(root: Path, scan: Scan, seen_dirs: set[tuple[int, int]]) -> None:
    """Depth-first walk of ``root``, name order, each real folder once."""
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            key = _dir_key(folder)
            if key in seen_dirs:
                scan.revisits.append(folder)
                continue
            seen_dirs.add(key)
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            scan.failures.append((folder, f"cannot list folder ({exc.strerror or exc})"))
            continue
        subdirs = []
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith("."):
                scan.skipped.append(path)
                continue
            kind = _entry_kind(entry)
            if kind == "dir":
                subdirs.append(path)
            elif not is_image_name(path):
                scan.skipped.append(path)
            elif kind == "file":
                scan.files.append(path)
            else:
                scan.failures.append((path, kind))
        # Reversed so the stack pops sub-folders in name order.
        stack.extend(reversed(subdirs))


def _entry_kind(entry: os.DirEntry) -> str:
    """``"dir"``, ``"file"``, or the reason the entry is neither."""
    try:
        if entry.is_dir():
            return "dir"
        if entry.is_file():
            return "file"
        st = os.stat(entry.path)
    except FileNotFoundError:
        return "broken symbolic link (target does not exist)"
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    return f"not a regular file (mode {stat.filemode(st.st_mode)})"


def find_images(paths: Sequence[PathArg]) -> Scan:
    """Expand files and folders into the list of files to classify.

    Args:
        paths: Files and folders, as given on the command line.

    Returns:
        A :class:`Scan`; each file appears once, however often it was reached.

    Example:
        >>> [str(p) for p in find_images(["missing.jpg"]).files]
        ['missing.jpg']
    """
    scan = Scan()
    seen_dirs: set[tuple[int, int]] = set()
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            _walk(path, scan, seen_dirs)
        else:
            # Explicit files are always attempted, so a missing or odd one is
            # reported by the loader with its reason.
            scan.files.append(path)
    scan.files = list(dict.fromkeys(scan.files))
    return scan
