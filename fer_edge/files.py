"""Finding the image files to classify, and naming them safely in output.

Rules (also in the README and ``fer-edge classify --help``):

* A file named explicitly is always attempted, whatever its extension, and
  reported if it fails.
* A folder is walked recursively in name order. Inside it, files whose
  extension is not an image extension Pillow can decode
  (:data:`IMAGE_EXTENSIONS`), hidden entries (name starting with ``.``,
  e.g. macOS ``._IMG.jpg`` resource forks) and the copies ``--annotate``
  writes (``<name>.annotated.png``, see :func:`is_annotated_copy`) are
  skipped and counted, not reported as failures.
* A path that does not exist is one failure (once, however often it is
  named), worded for what was named:
  ``no such folder`` (given with a trailing ``/``), ``no such file`` (it has
  an extension) or ``no such file or folder``.
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

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

from PIL import Image

from .preprocess import RASTER_FORMATS

PathArg = Union[str, "os.PathLike[str]"]


def _raster_extensions() -> frozenset[str]:
    """The extensions Pillow registers for :data:`~fer_edge.preprocess.RASTER_FORMATS`."""
    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items()
                     if fmt in RASTER_FORMATS)


#: Lower-case extensions (with the dot) that a folder walk picks up: those of
#: the formats the loader decodes, so the two lists cannot drift apart.
IMAGE_EXTENSIONS: frozenset[str] = _raster_extensions()

# C0 and C1 controls, DEL, line/paragraph separators and the bidirectional
# overrides and isolates ("Trojan Source"): in a name they could end a line,
# move the cursor, retitle or clear the terminal, or reorder what is shown.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_control(match: re.Match) -> str:
    char = match.group()
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` made safe to print on one line of a terminal or a UTF-8 file.

    File names that are not valid UTF-8 reach Python as lone surrogates
    (PEP 383); their bytes become ``\\xNN``. Control characters (newline,
    escape sequences, bidirectional overrides) become ``\\n``, ``\\t``,
    ``\\r``, ``\\xNN`` or ``\\uNNNN``, so a name can neither break the
    one-line-per-error promise nor take over the terminal.

    Example:
        >>> printable(os.fsdecode(b"caf\\xe9.jpg"))
        'caf\\\\xe9.jpg'
        >>> printable("a\\nb\\x1b[2J.jpg")
        'a\\\\nb\\\\x1b[2J.jpg'
    """
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        # Surrogates that did not come from undecodable bytes: escape them as-is.
        safe = text.encode("utf-8", "backslashreplace").decode("utf-8")
    else:
        safe = raw.decode("utf-8", "backslashreplace")
    return _CONTROLS.sub(_escape_control, safe)


def display_path(path: PathArg | bytes) -> str:
    """The path as a printable string (see :func:`printable`)."""
    return printable(os.fsdecode(path))


# fer_edge.annotate names its copies <stem>.annotated.png, or <stem>.annotated-N.png
# when that exists. Walking them again would classify the copies as new photos.
_ANNOTATED_COPY = re.compile(r"\.annotated(-\d+)?\.png$", re.IGNORECASE)


def is_annotated_copy(path: PathArg) -> bool:
    """Whether the file name is one ``--annotate`` writes (``<stem>.annotated[-N].png``).

    Example:
        >>> is_annotated_copy("out/team.annotated.png"), is_annotated_copy("out/team.annotated-2.png")
        (True, True)
        >>> is_annotated_copy("team.png"), is_annotated_copy("annotated.png")
        (False, False)
    """
    return bool(_ANNOTATED_COPY.search(os.path.basename(os.fspath(path))))


def missing_reason(arg: PathArg) -> str:
    """How to say that the path ``arg``, as the user typed it, does not exist.

    A trailing separator says the user meant a folder; an extension says a
    file; otherwise either is possible.

    Example:
        >>> missing_reason("photos/"), missing_reason("a.jpg"), missing_reason("photos")
        ('no such folder', 'no such file', 'no such file or folder')
    """
    text = os.fspath(arg)
    if text.endswith(os.sep) or (os.altsep is not None and text.endswith(os.altsep)):
        return "no such folder"
    return "no such file" if Path(text).suffix else "no such file or folder"


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
            elif not is_image_name(path) or is_annotated_copy(path):
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


def _missing(path: Path) -> bool:
    """Whether nothing at all is at ``path`` (a dangling link is something)."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        # Permission denied and the like: the loader names the real reason.
        return False
    return False


def find_images(paths: Sequence[PathArg]) -> Scan:
    """Expand files and folders into the list of files to classify.

    Args:
        paths: Files and folders, as given on the command line.

    Returns:
        A :class:`Scan`; each file, and each failing path, appears once,
        however often it was reached.

    Example:
        >>> [(str(p), why) for p, why in find_images(["missing.jpg", "gone/"]).failures]
        [('missing.jpg', 'no such file'), ('gone', 'no such folder')]
    """
    scan = Scan()
    seen_dirs: set[tuple[int, int]] = set()
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            _walk(path, scan, seen_dirs)
        elif _missing(path):
            # Reported here, once, in words that fit what was named (the
            # loader could only say "file", and a folder may have been meant).
            scan.failures.append((path, missing_reason(arg)))
        else:
            # Explicit files are always attempted, so an odd one is reported
            # by the loader with its reason.
            scan.files.append(path)
    scan.files = list(dict.fromkeys(scan.files))
    scan.failures = _first_per_path(scan.failures)
    return scan


def _first_per_path(failures: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """One failure per path (the first), in order: a path named twice is reported once.

    ``gone/`` and ``gone`` are one path; the first mention's words are kept.
    """
    first: dict[Path, str] = {}
    for path, reason in failures:
        first.setdefault(path, reason)
    return list(first.items())
