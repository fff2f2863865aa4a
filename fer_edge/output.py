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
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence, TextIO

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


class CsvWriter(Writer):
    """One row per face; one row with empty label for no face or an error."""

    def begin(self) -> None:
        self._csv = csv.writer(self.stream, lineterminator="\n")
        self._csv.writerow(self.header())

    def header(self) -> list[str]:
        """Column names; one ``prob_<label>`` column per label, in label order."""
        return ["path", "width", "height", "detected", "face", "x", "y", "w", "h",
                "detection_score", "label", "score",
                *(f"prob_{label}" for label in self.labels), "error"]

    def write(self, result: ImageResult) -> None:
        path = result.path or ""
        if result.error is not None:
            self._csv.writerow([path] + [""] * (len(self.header()) - 2) + [result.error])
            return
        image = [path, result.width, result.height, int(result.detected)]
        if not result.faces:
            self._csv.writerow(image + [""] * (len(self.header()) - len(image)))
        for i, face in enumerate(result.faces):
            self._csv.writerow(image + [i, *face.box, _fmt_score(face.detection_score),
                                        face.label, _fmt_score(face.score),
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


_WRITERS = {"table": TableWriter, "json": JsonWriter, "jsonl": JsonlWriter, "csv": CsvWriter}


def make_writer(fmt: str, stream: TextIO, labels: Sequence[str]) -> Writer:
    """A :class:`Writer` for ``fmt`` (one of :data:`FORMATS`).

    Raises:
        ValueError: ``fmt`` is not one of :data:`FORMATS`.
    """
    if fmt not in _WRITERS:
        raise ValueError(f"format {fmt!r} is not one of {list(FORMATS)}")
    return _WRITERS[fmt](stream, labels)


def check_output_path(path: Path, force: bool) -> None:
    """Refuse an output path that exists (without ``force``) or cannot be created.

    Raises:
        OutputError: naming the path and the reason.
    """
    name = display_path(path)
    if path.is_dir():
        raise OutputError(f"{name}: is a directory; give a file name for the output")
    if path.exists() and not force:
        raise OutputError(f"{name}: already exists; use --force to overwrite it")
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(f"{name}: folder {display_path(parent)} does not exist")


def current_umask() -> int:
    """The process umask (files written via mkstemp get 0o666 minus this)."""
    # os.umask can only be read by setting it; restore at once.
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "r.json"
        >>> with atomic_output(out) as f:
        ...     _ = f.write("[]\\n")
        >>> out.read_text()
        '[]\\n'
    """
    check_output_path(path, force)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"{display_path(path)}: cannot write ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        # mkstemp makes the file private (0600); give it the usual permissions.
        os.chmod(tmp, 0o666 & ~current_umask())
        if path.exists() and not force:
            # Someone created it while we were writing: still never overwrite.
            raise OutputError(f"{display_path(path)}: appeared while writing; use --force "
                              f"to overwrite it")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def error_line(result: ImageResult) -> str:
    """The one stderr line for a failed image (the error names the file)."""
    return f"fer-edge: error: {printable(result.error or '')}"
