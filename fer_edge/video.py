"""Video files, cameras and streams: decode, detect, classify and track faces frame by frame.

Decoding uses PyAV (the ``video`` extra: ``pip install '.[video]'`` in a checkout), which
bundles FFmpeg: files, ``/dev/videoN`` (V4L2) and AVFoundation cameras, and
network streams (RTSP, HTTP, ...) all go through one library. It is imported
only when a video is opened, so ``import fer_edge`` works without it.

:class:`VideoAnalysis` (what :meth:`fer_edge.Classifier.analyze_video`
returns) is a lazy iterator of :class:`VideoFrameResult`: frames are decoded in
a background thread into a small bounded queue, so decoding overlaps
inference, and memory holds a few frames and the live tracks only, however
long the video.

Files never drop frames (the decoder waits for inference); live sources
(cameras, streams) keep only the newest frame when inference falls behind and
count the frames dropped (:attr:`VideoStats.dropped`).
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Generator, Iterator

from PIL import Image

from . import faces as faces_module
from .detector import FaceBox, Landmark
from .errors import DependencyError, FerEdgeError
from .files import display_path, printable
from .results import FaceResult, ImageResult, Prediction
from .tracking import MAX_MISSED, MIN_IOU, BoxMotion, EmaSmoother, IouTracker

if TYPE_CHECKING:
    from .classifier import Classifier

#: How to install the decoder, for error messages.
VIDEO_EXTRA = "pip install av (or, in a fer-edge checkout, pip install '.[video]')"
#: URL schemes of live sources (never ending, frames dropped when behind).
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "udp", "tcp", "srt", "rtp")
#: Seconds a network source may take to answer before it counts as unopenable.
OPEN_TIMEOUT_S = 10.0
#: Analysed frames per detector pass by default: every one. A larger N
#: (``detect_every``) carries boxes forward in between, which is faster but
#: sees a new face up to N-1 analysed frames late.
DETECT_EVERY = 1
#: FFmpeg demuxers that read one picture as a one-frame video (besides the
#: ``*_pipe`` image demuxers): a photo given as a video.
STILL_IMAGE_DEMUXERS = ("image2", "image2pipe")
#: Decoded frames waiting for inference (files); a few smooth out decode
#: bursts (key frames) without holding much memory (640x480 RGB: 0.9 MB each).
FILE_QUEUE = 4


def require_av() -> ModuleType:
    """Import PyAV, or explain how to install it.

    Raises:
        DependencyError: PyAV is not installed (names the ``video`` extra).
    """
    try:
        import av
    except ImportError:
        raise DependencyError(f"reading video needs PyAV, which is not installed: {VIDEO_EXTRA}") from None
    return av


class VideoError(FerEdgeError, ValueError):
    """A video source cannot be opened, or decoding stopped early.

    Attributes:
        frame: The frame index where decoding stopped (``None``: it never started).
    """

    def __init__(self, message: str, frame: int | None = None) -> None:
        super().__init__(message)
        self.frame = frame


@dataclass(frozen=True)
class VideoSource:
    """What to open: a file, a camera or a URL, as FFmpeg needs it.

    Attributes:
        target: The path, device or URL passed to FFmpeg.
        name: How messages and records name it.
        live: Whether it is a camera or stream (frames may be dropped, no seeking).
        format: FFmpeg input format (``v4l2``, ``avfoundation``), ``None`` to probe.
        options: FFmpeg demuxer options.
    """

    target: str
    name: str
    live: bool
    format: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def camera(cls, index: int) -> VideoSource:
        """A local camera by number (V4L2 on Linux, AVFoundation on macOS).

        Raises:
            VideoError: No such camera, or cameras by number are not supported here.
        """
        name = f"camera {index}"
        if sys.platform.startswith("linux"):
            device = f"/dev/video{index}"
            if not os.path.exists(device):
                raise VideoError(f"{name}: no such camera ({device} does not exist)")
            return cls(device, name, True, "v4l2")
        if sys.platform == "darwin":
            return cls(str(index), name, True, "avfoundation", {"framerate": "30"})
        raise VideoError(f"{name}: cameras by number work on Linux and macOS; on this system give "
                         "the camera as a stream URL FFmpeg can open")

    @classmethod
    def parse(cls, source: str | os.PathLike) -> VideoSource:
        """A file path, or a URL (``scheme://...``) when no such file exists."""
        text = os.fspath(source)
        scheme = text.split("://", 1)[0].lower() if "://" in text else ""
        if scheme and not os.path.exists(text):
            return cls(text, printable(text), scheme in LIVE_SCHEMES,
                       options={"rw_timeout": str(int(OPEN_TIMEOUT_S * 1e6))})
        return cls(text, display_path(text), False)


@dataclass(frozen=True)
class VideoInfo:
    """What the opened video says about itself.

    Attributes:
        width: Frame width in pixels.
        height: Frame height in pixels.
        rate: Frame rate (``None`` when the container does not say).
        duration_s: Length in seconds (``None`` for live sources or when unknown).
        frames: Frame count from the container (``None`` when unknown).
        codec: Codec name.
        live: Whether the source is a camera or stream.
    """

    width: int
    height: int
    rate: Fraction | None
    duration_s: float | None
    frames: int | None
    codec: str
    live: bool

    @property
    def fps(self) -> float | None:
        """The frame rate as a float."""
        return None if self.rate is None else float(self.rate)


@dataclass
class VideoStats:
    """Counts and per-stage seconds of a :class:`VideoAnalysis` so far.

    ``decode_s`` is spent in the decoding thread (in parallel with the rest);
    ``detect_s`` and ``classify_s`` in the thread iterating. ``detections``
    counts the analysed frames the detector ran on (all of them unless
    ``detect_every`` > 1); ``carried`` the faces whose box was carried
    forward from the last detection instead (``faces`` counts both).
    """

    decoded: int = 0
    analysed: int = 0
    dropped: int = 0
    faces: int = 0
    tracks: int = 0
    detections: int = 0
    carried: int = 0
    decode_s: float = 0.0
    detect_s: float = 0.0
    classify_s: float = 0.0


@dataclass(frozen=True)
class TrackedFace(FaceResult):
    """A face in a video frame: a :class:`FaceResult` plus its track id.

    Attributes:
        track: The id this face keeps from frame to frame (:mod:`fer_edge.tracking`).
        raw: The frame's own prediction when ``prediction`` is smoothed, else ``None``.
        detected: ``True`` when the detector found the box on this frame;
            ``False`` when the detector skipped the frame (``detect_every``)
            and the box is the track's last detected one, moved on by its
            velocity (``detection_score`` is then ``None``). The expression
            is classified on this frame either way.
    """

    track: int = 0
    raw: Prediction | None = None
    detected: bool = True


@dataclass
class VideoRecord(ImageResult):
    """One face in one analysed frame: the record ``fer-edge video`` writes.

    An :class:`ImageResult` (with exactly one face), so the JSON writers of
    :mod:`fer_edge.output` take it as is. Its ``detected`` is the face's:
    whether the detector found this box on this frame (see :class:`TrackedFace`).
    """

    frame: int = 0
    time_s: float = 0.0

    def to_record(self) -> dict[str, Any]:
        """``path``, ``frame``, ``time_s``, ``track``, ``detected``, ``box``,
        ``detection_score``, ``label``, ``score``, ``probabilities``."""
        face = self.faces[0]
        return {"path": self.path, "frame": self.frame, "time_s": round(self.time_s, 6),
                "track": getattr(face, "track", None), "detected": self.detected,
                **face.to_record()}


@dataclass
class VideoFrameResult:
    """One decoded frame and, when it was analysed, its faces.

    Attributes:
        frame: Index of the frame in the video (0 = first frame of the file).
        time_s: Its presentation time in seconds from the start of the video.
        width: Frame width.
        height: Frame height.
        analysed: Whether faces were found and classified on this frame
            (``--every``/``--fps`` skip some; those come only with ``all_frames``).
        faces: The faces, with track ids; empty when none or not analysed.
        image: The decoded RGB frame, only with ``keep_images`` (for drawing).
        detected: Whether the detector ran on this frame; ``False`` on an
            analysed frame between detections (``detect_every``), whose faces
            are the last detection's, carried forward.
    """

    frame: int
    time_s: float
    width: int
    height: int
    analysed: bool
    faces: list[TrackedFace] = field(default_factory=list)
    image: Image.Image | None = None
    detected: bool = False

    def records(self, path: str | None) -> list[VideoRecord]:
        """One :class:`VideoRecord` per face, named ``path``."""
        return [VideoRecord(path, self.width, self.height, face.detected, [face], None, self.frame,
                            self.time_s)
                for face in self.faces]


@dataclass
class _Decoded:
    frame: int
    time_s: float
    analyse: bool
    image: Image.Image | None


@dataclass
class _Failed:
    error: BaseException


_END = object()


def _open(av: ModuleType, source: VideoSource) -> Any:
    """Open the container, turning FFmpeg's errors into one clear :class:`VideoError`."""
    kwargs: dict[str, Any] = {"options": dict(source.options)}
    if source.format:
        kwargs["format"] = source.format
    if "://" in source.target:
        kwargs["timeout"] = OPEN_TIMEOUT_S
    if not source.live and "://" not in source.target:
        path = Path(source.target)
        if not path.exists():
            raise VideoError(f"{source.name}: no such file")
        if path.is_dir():
            raise VideoError(f"{source.name}: is a directory, not a video file")
    try:
        container = av.open(source.target, **kwargs)
    except av.FFmpegError as exc:
        raise VideoError(f"{source.name}: cannot open ({_reason(av, exc, source)})") from None
    except OSError as exc:  # raised before FFmpeg is reached (permissions...)
        raise VideoError(f"{source.name}: cannot open ({exc.strerror or exc})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{source.name}: not a video (no video stream)")
    if _is_still_image(container):
        container.close()
        raise VideoError(f"{source.name}: a still image, not a video: use fer-edge classify "
                         "(Classifier.analyze) for photos")
    return container


def _is_still_image(container: Any) -> bool:
    """Whether FFmpeg opened a single picture (a photo) rather than a video.

    FFmpeg reads a photo as a one-frame video through an image demuxer:
    ``image2`` (chosen by the suffix) or one of the ``*_pipe`` ones (chosen by
    the content: ``png_pipe``, ``jpeg_pipe``, ``tiff_pipe``...). A GIF is a
    still image when its container holds one frame; an animated one is a video.
    """
    names = str(container.format.name).split(",")
    if any(name in STILL_IMAGE_DEMUXERS or name.endswith("_pipe") for name in names):
        return True
    return "gif" in names and container.streams.video[0].frames == 1


def _reason(av: ModuleType, exc: BaseException, source: VideoSource) -> str:
    if isinstance(exc, av.error.InvalidDataError):
        return "not a video file FFmpeg can read, or damaged" if not source.live else "invalid data"
    text = getattr(exc, "strerror", None) or str(exc)
    return printable(str(text)).lower()


def _info(container: Any, source: VideoSource) -> VideoInfo:
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or None
    duration: float | None = None
    if not source.live:
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration and len(container.streams) == 1:
            # Only a video-only container's length is the video's (audio may run longer).
            duration = container.duration / 1e6
    return VideoInfo(stream.codec_context.width, stream.codec_context.height,
                     Fraction(rate) if rate else None, duration, stream.frames or None,
                     stream.codec_context.name, source.live)


class VideoAnalysis(Iterator[VideoFrameResult]):
    """Faces, tracks and expressions of a video, one :class:`VideoFrameResult` at a time.

    Made by :meth:`fer_edge.Classifier.analyze_video`; see it for the arguments.
    The source is opened when this is created (so a bad source fails at
    once); frames are decoded lazily. Use it as a context manager, or call
    :meth:`close`, to stop early and release the decoder.

    With ``detect_every=N`` the detector runs on analysed frames 0, N, 2N, ...
    only; on the analysed frames in between, each face of the last detection
    is carried forward (its box moved by the track's velocity,
    :class:`fer_edge.tracking.BoxMotion`), cropped and classified as usual,
    and marked ``detected=False``. Detection is the costliest stage, so N=2
    nearly halves its share; the price: a face that appears is seen up to N-1
    analysed frames late, one that leaves is reported up to N-1 frames too
    long, and a box lags a face that changes speed or direction.

    Attributes:
        source: What was opened.
        info: Size, frame rate, length of the video.
        stats: Counts and per-stage timings so far.

    Raises:
        ValueError: At once, for arguments out of range (``every`` or
            ``detect_every`` < 1, ...).
        VideoError: While iterating, after the last frame that decoded: the
            video is truncated or damaged (``frame`` says where it stopped).
    """

    def __init__(self, classifier: Classifier, source: str | os.PathLike | None = None, *,
                 camera: int | None = None, every: int = 1, fps: float | None = None,
                 start: float | None = None, end: float | None = None, smooth: float | None = None,
                 all_frames: bool = False, keep_images: bool = False,
                 min_iou: float = MIN_IOU, max_missed: int = MAX_MISSED,
                 detect_every: int = DETECT_EVERY) -> None:
        if (source is None) == (camera is None):
            raise ValueError("give either a source (file or URL) or camera=N")
        for name, value in (("every", every), ("detect_every", detect_every)):
            # bool is an int, but True as a frame count is a mistake.
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be positive, got {fps!r}")
        if start is not None and start < 0 or end is not None and end <= (start or 0):
            raise ValueError(f"need 0 <= start < end, got start={start!r}, end={end!r}")
        av = require_av()
        self.source = VideoSource.camera(camera) if camera is not None else VideoSource.parse(
            source)  # type: ignore[arg-type]  # source is set when camera is None
        if self.source.live and start is not None:
            raise ValueError("start is for files; a live source cannot seek")
        self._av = av
        self._clf = classifier
        self._every, self._fps, self._start, self._end = every, fps, start, end
        self._all, self._keep = all_frames, keep_images
        self._detect_every = detect_every
        self._tracker = IouTracker(min_iou=min_iou, max_missed=max_missed)
        self._motion = BoxMotion()
        # The faces of the last detection, (track, box): what frames between
        # detections carry forward.
        self._last: list[tuple[int, FaceBox]] = []
        self._smoother = EmaSmoother(smooth) if smooth is not None else None
        self.stats = VideoStats()
        self._container = _open(av, self.source)
        try:
            self.info = _info(self._container, self.source)
            length = self.info.duration_s
            if start is not None and length is not None and start >= length:
                # Not a damaged file (what decoding nothing would otherwise report): a bad start.
                raise ValueError(f"start {start:g} s is at or past the end of {self.source.name} "
                                 f"({length:.2f} s long)")
        except BaseException:
            self._container.close()
            raise
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1 if self.source.live else FILE_QUEUE)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._decode, name="fer-edge-decode", daemon=True)
        self._thread.start()
        self._iter = self._run()

    # -- iteration --------------------------------------------------------

    def __iter__(self) -> VideoAnalysis:
        return self

    def __next__(self) -> VideoFrameResult:
        return next(self._iter)

    def __enter__(self) -> VideoAnalysis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stop(self) -> None:
        """End the iteration after the frame in hand (safe from a signal handler).

        How a camera run is ended cleanly: what was yielded stays whole.
        """
        self._stop.set()

    def close(self) -> None:
        """Stop decoding and release the source (safe to call twice)."""
        self._stop.set()
        # Unblock a decoder waiting on a full queue.
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=OPEN_TIMEOUT_S)
        self._iter.close()

    def _run(self) -> Generator[VideoFrameResult, None, None]:
        try:
            while not self._stop.is_set():
                try:
                    # A timeout, so stop() ends a run whose source went quiet.
                    item = self._queue.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    raise item.error
                result = self._analyse(item) if item.analyse else VideoFrameResult(
                    item.frame, item.time_s, self.info.width, self.info.height, False, [],
                    item.image if self._keep else None)
                yield result
        finally:
            self._stop.set()

    def _analyse(self, item: _Decoded) -> VideoFrameResult:
        image = item.image
        assert image is not None  # analysed frames are always converted
        detect = self.stats.analysed % self._detect_every == 0
        t0 = time.perf_counter()
        if detect:
            boxes = self._clf.detector.detect(image)
            self.stats.detect_s += time.perf_counter() - t0
            self.stats.detections += 1
            ids = self._track(boxes, item.time_s)
        else:
            ids, boxes = self._carry(item.time_s)
            self.stats.carried += len(boxes)
        t1 = time.perf_counter()
        preds = self._clf.predict_batch([faces_module.crop_face(image, b) for b in boxes]) if boxes else []
        self.stats.classify_s += time.perf_counter() - t1
        faces = [self._face(fb, pred, track, detect) for fb, pred, track in zip(boxes, preds, ids)]
        self.stats.analysed += 1
        self.stats.faces += len(faces)
        self.stats.tracks = max(self.stats.tracks, max(ids, default=0))
        return VideoFrameResult(item.frame, item.time_s, image.width, image.height, True, faces,
                                image if self._keep else None, detect)

    def _track(self, boxes: list[FaceBox], time_s: float) -> list[int]:
        """Track ids for this detection's boxes; remember them for the frames until the next."""
        xywh = [(int(b.x), int(b.y), int(b.w), int(b.h)) for b in boxes]
        ids = self._tracker.update(xywh)
        for track, box in zip(ids, xywh):
            self._motion.observe(track, box, time_s)
        self._motion.forget(self._tracker.ended)
        if self._smoother is not None:
            self._smoother.forget(self._tracker.ended)
        self._last = list(zip(ids, boxes))
        return ids

    def _carry(self, time_s: float) -> tuple[list[int], list[FaceBox]]:
        """The last detection's faces, each moved to where its velocity puts it at ``time_s``."""
        ids = [track for track, _ in self._last]
        boxes = [_shifted(box, *self._motion.offset(track, time_s)) for track, box in self._last]
        return ids, boxes

    def _face(self, box: FaceBox, pred: Prediction, track: int, detected: bool) -> TrackedFace:
        """The record of one face: smoothed when asked, with its track id."""
        raw: Prediction | None = None
        if self._smoother is not None:
            raw = pred
            probs = self._smoother.update(track, [pred.probabilities[k] for k in self._clf.labels])
            pred = self._clf._prediction(probs)
        score = None if box.score is None else float(box.score)
        xywh = (int(box.x), int(box.y), int(box.w), int(box.h))
        return TrackedFace(xywh, score, pred, track, raw, detected)

    # -- the decoding thread ----------------------------------------------

    def _put(self, item: Any) -> bool:
        """Queue an item; ``False`` when stopped.

        A live source's frame never waits for inference: when the queue is
        full, the frame waiting there is dropped (and counted) for this newer
        one. Waiting would pace the decoder by inference as for a file, so
        the source's own buffers would fill with ever older frames, dropped
        unseen. The end and errors do wait, so the last frame is analysed.
        """
        live_frame = self.source.live and isinstance(item, _Decoded)
        while not self._stop.is_set():
            try:
                if live_frame:
                    self._queue.put_nowait(item)
                else:
                    self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                if live_frame:
                    try:
                        self._queue.get_nowait()
                        self.stats.dropped += 1
                    except queue.Empty:  # inference took it meanwhile
                        pass
        return False

    def _decode(self) -> None:
        av, container = self._av, self._container
        stream = container.streams.video[0]
        # One FFmpeg decoding thread: at 640x480 it keeps far ahead of inference
        # (~230 fps), and frame threads would take cores ONNX Runtime uses.
        stream.thread_count = 1
        base = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        fps = self.info.fps
        index, last_time, next_due = 0, -1.0, 0.0
        first_live: float | None = None
        try:
            if self._start:
                container.seek(int(self._start / stream.time_base) + (stream.start_time or 0),
                               stream=stream, backward=True)
            t0 = time.perf_counter()
            for frame in container.decode(stream):
                if self._stop.is_set():
                    return
                if frame.time is not None:
                    t = float(frame.time) - base
                elif fps:
                    t = index / fps
                else:
                    t = last_time + 1e-3
                if self.source.live:
                    # A camera's clock starts wherever the device's does.
                    first_live = t if first_live is None else first_live
                    t -= first_live
                if self._start and t < self._start - 1e-6:
                    t0 = time.perf_counter()
                    continue  # decoded from the key frame before --start
                if self._start and index == 0 and fps:
                    index = round(t * fps)
                    next_due = t
                if self._end is not None and t >= self._end:
                    break
                if self._fps is not None:
                    analyse = t >= next_due - 1e-6
                    if analyse:
                        next_due = max(next_due + 1.0 / self._fps, t)
                else:
                    analyse = index % self._every == 0
                image = frame.to_image() if analyse or (self._all and self._keep) else None
                self.stats.decode_s += time.perf_counter() - t0
                self.stats.decoded += 1
                last_time = t
                if (analyse or self._all) and not self._put(_Decoded(index, t, analyse, image)):
                    return
                index += 1
                t0 = time.perf_counter()
            self._check_complete(index, last_time)
        except (av.FFmpegError, VideoError, OSError) as exc:
            self._put(_Failed(self._stopped_error(exc, index, last_time)))
            return
        except BaseException as exc:  # a bug: report it in the iterating thread
            self._put(_Failed(exc))
            return
        finally:
            container.close()
        self._put(_END)

    def _check_complete(self, index: int, last_time: float) -> None:
        """Raise when a file ended well before the length its container gives."""
        info = self.info
        if info.live or self._end is not None or info.duration_s is None:
            return
        frame_s = 1.0 / info.fps if info.fps else 0.04
        if last_time + 3 * frame_s < info.duration_s:
            raise VideoError("the file ends early (truncated?)")

    def _stopped_error(self, exc: BaseException, index: int, last_time: float) -> VideoError:
        reason = str(exc) if isinstance(exc, VideoError) else _reason(self._av, exc, self.source)
        if isinstance(exc, VideoError) and exc.frame is not None:
            return exc
        where = f"frame {index}"
        if last_time >= 0:
            where += f" ({last_time:.2f} s"
            where += f" of {self.info.duration_s:.2f} s)" if self.info.duration_s else ")"
        return VideoError(f"{self.source.name}: decoding stopped at {where}: {reason}", frame=index)


def _shifted(box: FaceBox, dx: float, dy: float) -> FaceBox:
    """``box`` and its landmarks moved by ``(dx, dy)``, without a detection score (not detected here).

    The landmarks move too, so the crop is aligned by the eyes as on detected frames.
    """
    # A new FaceBox, not dataclasses.replace: a detector of one's own may return look-alikes.
    landmarks = tuple(Landmark(p.name, p.x + dx, p.y + dy) for p in getattr(box, "landmarks", ()))
    return FaceBox(int(round(box.x + dx)), int(round(box.y + dy)), int(box.w), int(box.h), None,
                   landmarks)


def frame_rate_of(info: VideoInfo, default: float = 30.0) -> Fraction:
    """The frame rate to write an annotated copy at (the input's, else ``default``)."""
    if info.rate is not None and info.rate > 0:
        return info.rate
    return Fraction(default).limit_denominator(1001)

