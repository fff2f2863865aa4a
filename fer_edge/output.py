"""Writing results as a table, JSON, JSON Lines or CSV, and writing files safely.

All four formats are streamed: each :class:`~fer_edge.results.ImageResult` is
written as soon as it is known, so long runs show results as they go and a
JSON array is still one valid document at the end.

Example:
    >>> import io
    >>> from fer_edge.results import ImageResult
    >>> buf = io.StringIO()
    >>> w = make_writer("jsonl", buf, labels=["happy", "sad"])
    >>> w.begin(); w.write(ImageResult.failed("a.png", "a.png: empty file")); w.end()
    >>> buf.getvalue()
    '{"path": "a.png", "error": "a.png: empty file"}\\n'
"""

from __future__ import annotations

import abc
import csv
import errno
import json
import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence, TextIO, cast

from .atomic import atomic_write
from .errors import FerEdgeError
from .files import display_path, printable
from .results import ImageResult

#: ``--format`` choices; the first is the default.
FORMATS = ("table", "json", "jsonl", "csv")


class OutputError(FerEdgeError, OSError):
    """The output file cannot be written (exists without ``--force``, bad folder...)."""


class Writer(abc.ABC):
    """Streams :class:`ImageResult` objects to a text stream in one format."""

    def __init__(self, stream: TextIO, labels: Sequence[str]) -> None:
        self.stream = stream
        self.labels = list(labels)

    def begin(self) -> None:
        """Write what comes before the first result (header, ``[``)."""

    @abc.abstractmethod
    def write(self, result: ImageResult) -> None:
        """Write one image's result."""

    def end(self) -> None:
        """Write what comes after the last result."""


def _dumps(record: dict[str, Any]) -> str:
    # Paths and messages are already printable(), so non-ASCII stays readable.
    return json.dumps(record, ensure_ascii=False, allow_nan=False)


class JsonWriter(Writer):
    """One JSON array of records (see :meth:`ImageResult.to_record`)."""

    def begin(self) -> None:
        self._count = 0
        self.stream.write("[")

    def write(self, result: ImageResult) -> None:
        self.stream.write(("," if self._count else "") + "\n  " + _dumps(result.to_record()))
        self._count += 1

    def end(self) -> None:
        self.stream.write("\n]\n" if self._count else "]\n")


class JsonlWriter(Writer):
    """One JSON record per line."""

    def write(self, result: ImageResult) -> None:
        self.stream.write(_dumps(result.to_record()) + "\n")


def _fmt_score(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


#: First characters that make a spreadsheet read a cell as a formula (OWASP "CSV
#: Injection"): a file named ``=cmd|' /C calc'!A0.jpg`` must stay text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value: str) -> str:
    """A text cell as OWASP advises: a leading ``'`` when it could start a formula.

    Applied to the cells that come from outside (paths, labels, error
    messages); numbers fer-edge formats itself are left alone.

    Example:
        >>> csv_text("=1+1.jpg"), csv_text("photos/a.jpg")
        ("'=1+1.jpg", 'photos/a.jpg')
    """
    return "'" + value if value.startswith(FORMULA_STARTS) else value


class CsvWriter(Writer):
    """One row per face; one row with empty label for no face or an error.

    Paths, labels and errors that could start a spreadsheet formula get a
    leading ``'`` (:func:`csv_text`).
    """

    def begin(self) -> None:
        self._csv = csv.writer(self.stream, lineterminator="\n")
        self._csv.writerow(self.header())

    def header(self) -> list[str]:
        """Column names; one ``prob_<label>`` column per label, in label order."""
        return ["path", "width", "height", "detected", "face", "x", "y", "w", "h",
                "detection_score", "label", "score",
                *(csv_text(f"prob_{label}") for label in self.labels), "error"]

    def write(self, result: ImageResult) -> None:
        path = csv_text(result.path or "")
        if result.error is not None:
            self._csv.writerow([path] + [""] * (len(self.header()) - 2)
                               + [csv_text(result.error)])
            return
        image = [path, result.width, result.height, int(result.detected)]
        if not result.faces:
            self._csv.writerow(image + [""] * (len(self.header()) - len(image)))
        for i, face in enumerate(result.faces):
            self._csv.writerow(image + [i, *face.box, _fmt_score(face.detection_score),
                                        csv_text(face.label), _fmt_score(face.score),
                                        *(_fmt_score(face.probabilities.get(label))
                                          for label in self.labels), ""])


class TableWriter(Writer):
    """Aligned columns for people: label, score, face box, path."""

    NO_FACE = "(no face)"
    ERROR = "ERROR"

    def begin(self) -> None:
        self._width = max([len(x) for x in self.labels] + [len(self.NO_FACE), len("label")])
        self._row("label", "score", "box x,y,w,h", "path")

    def _row(self, label: str, score: str, box: str, path: str) -> None:
        self.stream.write(f"{label:<{self._width}}  {score:>6}  {box:<19}  {path}\n")

    def write(self, result: ImageResult) -> None:
        path = result.path or "<image>"
        if result.error is not None:
            self._row(self.ERROR, "-", "-", result.error)
        elif not result.faces:
            self._row(self.NO_FACE, "-", "-", path)
        for i, face in enumerate(result.faces):
            where = path if len(result.faces) == 1 else f"{path} (face {i + 1} of {len(result.faces)})"
            self._row(face.label, f"{face.score:.3f}", ",".join(map(str, face.box)), where)


_WRITERS: dict[str, type[Writer]] = {
    "table": TableWriter, "json": JsonWriter, "jsonl": JsonlWriter, "csv": CsvWriter}


def make_writer(fmt: str, stream: TextIO, labels: Sequence[str]) -> Writer:
    """A :class:`Writer` for ``fmt`` (one of :data:`FORMATS`).

    Raises:
        ValueError: ``fmt`` is not one of :data:`FORMATS`.
    """
    if fmt not in _WRITERS:
        raise ValueError(f"format {fmt!r} is not one of {list(FORMATS)}")
    return _WRITERS[fmt](stream, labels)


def _not_replaceable(path: Path) -> str | None:
    """Why ``--force`` may not replace ``path`` (``None``: missing or a regular file)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISREG(mode):
        return None
    # Replacing a link, device or FIFO would not write where the user meant
    # (as root, "-o /dev/null --force" would replace /dev/null itself).
    kinds = {stat.S_ISLNK: "a symbolic link", stat.S_ISFIFO: "a FIFO",
             stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device",
             stat.S_ISSOCK: "a socket", stat.S_ISDIR: "a directory"}
    kind = next((text for test, text in kinds.items() if test(mode)), "not a regular file")
    return f"is {kind}; --force replaces only regular files"


def check_output_path(path: Path, force: bool) -> None:
    """Refuse an output path that exists (without ``force``) or cannot be created.

    Raises:
        OutputError: naming the path and the reason.
    """
    name = display_path(path)
    if path.is_dir():
        raise OutputError(f"{name}: is a directory; give a file name for the output")
    if force and (reason := _not_replaceable(path)):
        raise OutputError(f"{name}: {reason}")
    if os.path.lexists(path) and not force:
        raise OutputError(f"{name}: already exists; use --force to overwrite it")
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(f"{name}: folder {display_path(parent)} does not exist")


#: errno values that mean the output could not be written (disk full, quota...).
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS})


def write_error(exc: OSError, name: str) -> OutputError | None:
    """``cannot write NAME: no space left on device`` for a failed write, else ``None``."""
    if exc.errno not in WRITE_ERRNOS:
        return None
    return OutputError(f"cannot write {name}: {os.strerror(exc.errno).lower()}")


@contextmanager
def atomic_output(path: Path, force: bool = False) -> Iterator[TextIO]:
    """Open a UTF-8 text stream whose content replaces ``path`` only on success.

    Writes to a temporary file in the same folder and ``os.replace``-s it
    over ``path`` at the end, so readers never see a half-written file and a
    failed run leaves any previous file untouched.

    Raises:
        OutputError: ``path`` exists and ``force`` is false, or it cannot be written.

    Example:
        >>> import tempfile, pathlib
        >>> import tempfile
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "r.json"
        >>> with atomic_output(out) as f:
        ...     _ = f.write("[]\\n")
        >>> out.read_text()
        '[]\\n'
    """
    check_output_path(path, force)
    started = False
    try:
        with atomic_write(path, "w", place=lambda tmp, dst: _put_in_place(tmp, dst, force),
                          encoding="utf-8", newline="") as stream:
            started = True
            yield cast(TextIO, stream)  # opened in text mode ("w")
    except OSError as exc:
        if not started:
            raise OutputError(f"{display_path(path)}: cannot write ({exc.strerror or exc})") from None
        raise write_error(exc, display_path(path)) or exc from None


def _put_in_place(tmp: Path, path: Path, force: bool) -> None:
    """Rename the finished ``tmp`` to ``path``, or next to it if ``path`` changed meanwhile.

    Raises:
        OutputError: something appeared at ``path`` during the run that may
            not be replaced; the results are kept under a new name it gives.
    """
    reason = _not_replaceable(path)
    if reason is None and (force or not os.path.lexists(path)):
        os.replace(tmp, path)
        return
    if reason is None:
        reason = "appeared while writing and is not replaced without --force"
    else:
        reason = f"appeared while writing and {reason}"
    kept = _keep_next_to(tmp, path)
    raise OutputError(f"{display_path(path)}: {reason}; the results are in "
                      f"{display_path(kept)}")


def _keep_next_to(tmp: Path, path: Path) -> Path:
    """Give ``tmp`` the first free name ``<stem>-N<suffix>`` beside ``path``."""
    for n in range(1, 10_000):
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        try:
            # A hard link never replaces an existing name, unlike rename().
            os.link(tmp, candidate)
        except FileExistsError:
            continue
        except OSError:  # no hard links on this file system: rename if still free
            if os.path.lexists(candidate):
                continue
            os.rename(tmp, candidate)
            return candidate
        os.unlink(tmp)
        return candidate
    raise OutputError(f"{display_path(path)}: no free name to keep the results next to it")


def error_line(result: ImageResult) -> str:
    """The one stderr line for a failed image (the error names the file)."""
    return f"fer-edge: error: {printable(result.error or '')}"
