"""Writing video results: the :mod:`fer_edge.output` writers with frame, time and track.

JSON and JSON Lines are :mod:`fer_edge.output`'s own writers (a
:class:`~fer_edge.video.VideoRecord` is an ImageResult whose record has the
video fields); CSV and the table subclass theirs for the extra columns, so
escaping (:func:`~fer_edge.output.csv_text`), streaming and atomic files are
shared with ``fer-edge classify``. :class:`AnnotatedVideo` writes the video
with boxes, track ids and labels drawn (via :func:`fer_edge.annotate.annotate`).
"""

from __future__ import annotations

import os
import tempfile
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence, TextIO

from PIL import Image

from .annotate import annotate
from .atomic import current_umask
from .files import display_path
from .output import (
    CsvWriter,
    OutputError,
    TableWriter,
    Writer,
    _fmt_score,
    _put_in_place,
    check_output_path,
    csv_text,
    make_writer,
)
from .results import FaceResult, ImageResult

#: Container formats for ``--annotate`` by suffix, and the codec written in each.
ANNOTATE_FORMATS = {".mp4": ("mp4", "libx264"), ".mov": ("mov", "libx264"),
                    ".mkv": ("matroska", "libx264"), ".avi": ("avi", "mpeg4"),
                    ".webm": ("webm", "libvpx")}


def _video_fields(result: ImageResult) -> tuple[int, float, Any]:
    """``frame``, ``time_s`` and the face of a :class:`~fer_edge.video.VideoRecord`."""
    return getattr(result, "frame", 0), getattr(result, "time_s", 0.0), result.faces[0]


class VideoCsvWriter(CsvWriter):
    """One row per face per analysed frame: path, frame, time_s, track, detected, box, label, scores.

    ``detected`` is 1 when the detector found the box on that frame, 0 when the
    box was carried forward from the last detection (``--detect-every``), as
    ``classify``'s CSV writes it.
    """

    def header(self) -> list[str]:
        """Column names; one ``prob_<label>`` column per label, in label order."""
        return ["path", "frame", "time_s", "track", "detected", "x", "y", "w", "h", "detection_score",
                "label", "score", *(csv_text(f"prob_{label}") for label in self.labels)]

    def write(self, result: ImageResult) -> None:
        frame, time_s, face = _video_fields(result)
        self._csv.writerow([csv_text(result.path or ""), frame, f"{time_s:.6f}",
                            getattr(face, "track", ""), int(result.detected), *face.box,
                            _fmt_score(face.detection_score), csv_text(face.label),
                            _fmt_score(face.score),
                            *(_fmt_score(face.probabilities.get(label)) for label in self.labels)])


class VideoTableWriter(TableWriter):
    """Aligned columns for people: frame, time, track, label, score, box.

    A box carried forward from the last detection (``--detect-every``) is
    followed by ``(carried)``.
    """

    def begin(self) -> None:
        self._width = max([len(x) for x in self.labels] + [len("label")])
        self.stream.write(f"{'frame':>7}  {'time_s':>9}  {'track':>5}  {'label':<{self._width}}  "
                          f"{'score':>6}  box x,y,w,h\n")

    def write(self, result: ImageResult) -> None:
        frame, time_s, face = _video_fields(result)
        self.stream.write(f"{frame:>7}  {time_s:>9.3f}  {getattr(face, 'track', ''):>5}  "
                          f"{face.label:<{self._width}}  {face.score:>6.3f}  "
                          f"{','.join(map(str, face.box))}{'' if result.detected else '  (carried)'}\n")


def make_video_writer(fmt: str, stream: TextIO, labels: Sequence[str]) -> Writer:
    """The writer of ``fer-edge video`` for ``fmt`` (one of :data:`fer_edge.output.FORMATS`)."""
    if fmt == "csv":
        return VideoCsvWriter(stream, labels)
    if fmt == "table":
        return VideoTableWriter(stream, labels)
    return make_writer(fmt, stream, labels)


class _Labelled:
    """What :func:`fer_edge.annotate.annotate` draws for a tracked face: ``#id label``.

    The box colour follows the label alone (one colour per expression, the
    same as ``classify --annotate``), not the track.
    """

    def __init__(self, face: FaceResult) -> None:
        self.box = face.box
        self.label = f"#{getattr(face, 'track', '?')} {face.label}"
        self.colour_label = face.label
        self.score = face.score


class AnnotatedVideo:
    """Write frames with their faces drawn into a new video file, atomically.

    The file is written under a temporary name in the same folder and moved
    into place by :meth:`close` only when complete (a failed or interrupted
    run leaves no half video, and never replaces an existing file without
    ``force``).

    Args:
        av: The PyAV module.
        path: Where the video goes; its suffix picks the container
            (:data:`ANNOTATE_FORMATS`).
        width: Frame width (the input's).
        height: Frame height.
        rate: Frame rate (the input's).
        force: Whether an existing file may be replaced.

    Raises:
        OutputError: The suffix is not supported, the file exists without
            ``force``, or it cannot be written.
    """

    def __init__(self, av: ModuleType, path: Path, width: int, height: int, rate: Fraction,
                 force: bool = False) -> None:
        check_annotate_path(path, force)
        fmt, codec = ANNOTATE_FORMATS[path.suffix.lower()]
        self.path, self.force = path, force
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        try:
            self._container = av.open(tmp, "w", format=fmt)
            self._stream = self._container.add_stream(codec, rate=rate)
            # yuv420p needs even sizes; the rare odd input is padded by one pixel.
            self._stream.width, self._stream.height = width + width % 2, height + height % 2
            self._stream.pix_fmt = "yuv420p"
            if codec == "libx264":
                # Fast enough to keep up with analysis; quality ~ visually lossless.
                self._stream.options = {"preset": "veryfast", "crf": "20"}
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise
        self._av = av
        self.frames = 0

    def write(self, image: Image.Image, faces: Sequence[FaceResult]) -> None:
        """Draw ``faces`` onto ``image`` and append it as the next frame."""
        drawn = annotate(image, [_Labelled(f) for f in faces]) if faces else image.convert("RGB")
        if drawn.size != (self._stream.width, self._stream.height):
            canvas = Image.new("RGB", (self._stream.width, self._stream.height))
            canvas.paste(drawn)
            drawn = canvas
        frame = self._av.VideoFrame.from_image(drawn)
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> Path:
        """Flush the encoder and move the finished file into place."""
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        os.chmod(self._tmp, 0o666 & ~current_umask())
        # As for --output: something that appeared meanwhile is never replaced
        # without --force; the video is then kept under a free name next to it.
        _put_in_place(self._tmp, self.path, self.force)
        return self.path

    def discard(self) -> None:
        """Remove the unfinished file (a failed or interrupted run)."""
        try:
            self._container.close()
        except Exception:  # the encoder may be in any state after a failure
            pass
        self._tmp.unlink(missing_ok=True)


def check_annotate_path(path: Path, force: bool) -> None:
    """Refuse an ``--annotate`` file that exists (without ``force``) or has no video suffix.

    Raises:
        OutputError: naming the path and the reason.
    """
    if path.suffix.lower() not in ANNOTATE_FORMATS:
        raise OutputError(f"{display_path(path)}: give a video file name ending in "
                          f"{', '.join(ANNOTATE_FORMATS)}")
    check_output_path(path, force)
