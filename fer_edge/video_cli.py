"""What ``fer-edge video`` does; the click command itself is in :mod:`fer_edge.cli`.

Kept apart so the video logic (PyAV, tracking, charts) is imported only when
the command runs. Outputs reuse ``classify``'s: the same formats and writers
(:mod:`fer_edge.video_output`), atomic files, ``--force``, exit codes.

Ending a run:

* a source that cannot be opened: one error line naming it, exit status 1;
  stdout still gets a whole document with no records (``[]`` in JSON, the
  header in CSV and the table), and no ``-o`` file is written;
* a file ends at its last frame (or ``--end``); a truncated or damaged file
  ends where decoding stopped, with one error line naming that frame, and
  exit status 1; everything before it is written, whole;
* a camera or stream runs until Ctrl-C (SIGINT) or SIGTERM: the frame in hand
  is finished, every output is completed, and the exit status is 0 (that is
  how a live run ends); a second Ctrl-C stops at once (130, outputs removed);
* on a file, Ctrl-C stops as in ``classify`` (130, no partial output files).
"""

from __future__ import annotations

import io
import logging
import os
import signal
import threading
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, TextIO

import click

from .atomic import atomic_write
from .cli import (
    EXIT_FAILED,
    EXIT_OK,
    STOP_SIGNALS,
    ModelOptions,
    Stopped,
    _load_classifier,
    _result_stream,
)
from .files import display_path, printable
from .output import OutputError, Writer, _put_in_place, atomic_output, check_output_path
from .results import FaceResult
from .timeline import Timeline, TrackSummary, draw_timeline
from .video import VideoAnalysis, VideoError, frame_rate_of, require_av
from .video_output import AnnotatedVideo, check_annotate_path, make_video_writer

log = logging.getLogger("fer_edge")

#: ``--summary`` formats by file suffix.
SUMMARY_SUFFIXES = {".json": "json", ".csv": "csv"}


@dataclass(frozen=True)
class VideoOptions:
    """What ``fer-edge video`` analyses and writes."""

    fmt: str
    output: Path | None
    force: bool
    every: int
    fps: float | None
    start: float | None
    end: float | None
    smooth: float | None
    summary: Path | None
    timeline: Path | None
    annotate: Path | None
    detect_every: int = 1


def check_usage(source: str | None, camera: int | None, opts: VideoOptions) -> None:
    """Usage errors (exit 2), found before anything is opened."""
    if (source is None) == (camera is None):
        raise click.UsageError("give a video file or stream URL, or --camera N (not both)")
    if source == "":
        raise click.BadParameter("an empty path names no video", param_hint="'SOURCE'")
    if opts.every != 1 and opts.fps is not None:
        raise click.UsageError("--every and --fps both choose frames; give one")
    if opts.detect_every < 1:  # click's IntRange says so first; this guards other callers
        raise click.BadParameter(f"{opts.detect_every} is not in the range N>=1 (1: detect on every "
                                 "analysed frame)", param_hint="'--detect-every'")
    if camera is not None and opts.start is not None:
        raise click.BadParameter("a camera cannot seek; --start is for files", param_hint="'--start'")
    if opts.start is not None and opts.end is not None and opts.end <= opts.start:
        raise click.BadParameter("must be later than --start", param_hint="'--end'")
    outputs = [("--output", opts.output), ("--summary", opts.summary), ("--timeline", opts.timeline),
               ("--annotate", opts.annotate)]
    given = [(name, path) for name, path in outputs if path is not None]
    seen: dict[str, str] = {}
    for name, path in given:
        real = os.path.realpath(path)
        if source is not None and real == os.path.realpath(source):
            raise click.BadParameter("is the input video; it would be overwritten", param_hint=f"'{name}'")
        if real in seen:
            raise click.BadParameter(f"is also given to {seen[real]}", param_hint=f"'{name}'")
        seen[real] = name
    try:
        for name, path in given:
            if name == "--annotate":
                check_annotate_path(path, opts.force)
            else:
                check_output_path(path, opts.force)
    except OutputError as exc:
        raise click.BadParameter(printable(str(exc)), param_hint=f"'{name}'") from None
    if opts.summary is not None and opts.summary.suffix.lower() not in SUMMARY_SUFFIXES:
        raise click.BadParameter("give a file name ending in .json or .csv", param_hint="'--summary'")
    if opts.timeline is not None and opts.timeline.suffix.lower() != ".png":
        raise click.BadParameter("give a file name ending in .png", param_hint="'--timeline'")


@contextmanager
def _live_stop(analysis: VideoAnalysis) -> Iterator[list[int]]:
    """While inside, the first stop signal ends a live run after the frame in hand.

    Yields a list that gets the signal's number; a second signal raises
    :class:`fer_edge.cli.Stopped` as usual (stop at once, outputs removed).
    """
    received: list[int] = []
    previous = {}

    def handler(signum: int, _frame: object) -> None:
        if received:
            raise Stopped(signum)
        received.append(signum)
        analysis.stop()

    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                previous[sig] = signal.signal(sig, handler)
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_video(source: str | None, camera: int | None, opts: VideoOptions, model: ModelOptions) -> int:
    """Analyse one video source and write every requested output; returns the exit status."""
    check_usage(source, camera, opts)
    av = require_av()  # before loading the model: a missing extra is the first thing to say
    clf = _load_classifier(model)
    keep = opts.annotate is not None
    try:
        analysis = clf.analyze_video(source, camera=camera, every=opts.every, fps=opts.fps,
                                     start=opts.start, end=opts.end, smooth=opts.smooth,
                                     detect_every=opts.detect_every, all_frames=keep,
                                     keep_images=keep)
    except VideoError as exc:
        if opts.output is None:  # stdout still gets a whole document (no -o file: nothing to keep)
            with _result_stream(None, opts.force) as stream:
                _write_empty(make_video_writer(opts.fmt, stream, clf.labels))
        click.echo(f"fer-edge: error: {printable(str(exc))}", err=True)
        return EXIT_FAILED
    except ValueError as exc:  # an option the file itself rules out (--start past its end)
        raise click.BadParameter(printable(str(exc)), param_hint="'--start'") from None
    name = analysis.source.name
    info = analysis.info
    log.info("%s: %dx%d, %s fps, %s, %s", name, info.width, info.height,
             f"{info.fps:.3f}" if info.fps else "unknown", info.codec,
             "live" if info.live else (f"{info.duration_s:.2f} s" if info.duration_s else "length unknown"))
    summary = TrackSummary(clf.labels)
    timeline = Timeline(clf.labels) if opts.timeline is not None else None
    annotated: AnnotatedVideo | None = None
    failure: str | None = None
    stopped_by: list[int] = []
    try:
        if opts.annotate is not None:
            annotated = AnnotatedVideo(av, opts.annotate, info.width, info.height,
                                       frame_rate_of(info), force=opts.force)
        with _result_stream(opts.output, opts.force) as stream:
            writer = make_video_writer(opts.fmt, stream, clf.labels)
            writer.begin()
            try:
                with _live_stop(analysis) if info.live else _no_stop() as stopped_by:
                    failure = _write_frames(analysis, writer, stream, summary, timeline, annotated)
            except BaseException:
                # Whatever stopped the run (a model failure, Ctrl-C), the document on stdout
                # stays whole, as in classify (a -o file is discarded by atomic_output).
                with suppress(Exception):
                    writer.end()
                raise
            writer.end()
        _write_extras(opts, summary, timeline, name)
        if annotated is not None:
            written = annotated.close()
            annotated = None
            log.info("annotated video: %s", display_path(written))
    except BaseException:
        if annotated is not None:
            annotated.discard()
        raise
    finally:
        analysis.close()
    stats = analysis.stats
    log.info("%d frames decoded, %d analysed (detector ran on %d), %d faces (%d carried) in %d "
             "tracks; seconds: decode %.2f, detect %.2f, classify %.2f", stats.decoded,
             stats.analysed, stats.detections, stats.faces, stats.carried, stats.tracks,
             stats.decode_s, stats.detect_s, stats.classify_s)
    if stats.dropped:
        log.warning("%s: %d frames dropped because analysis fell behind the live source",
                    name, stats.dropped)
    if stopped_by:
        log.info("stopped by %s; outputs complete", signal.Signals(stopped_by[0]).name)
    if failure is not None:
        click.echo(f"fer-edge: error: {failure}", err=True)
        return EXIT_FAILED
    return EXIT_OK


def _write_frames(analysis: VideoAnalysis, writer: Writer, stream: TextIO, summary: TrackSummary,
                  timeline: Timeline | None, annotated: AnnotatedVideo | None) -> str | None:
    """Write each analysed frame's records and add its faces to the summary, timeline and video.

    Returns:
        The error that stopped decoding early (a truncated or damaged file), or
        ``None`` when the source ended (or was stopped) normally.
    """
    name = analysis.source.name
    last_faces: list[FaceResult] = []
    try:
        for result in analysis:
            if result.analysed:
                for record in result.records(name):
                    writer.write(record)
                for face in result.faces:
                    summary.add(face.track, result.time_s, face.label)
                    if timeline is not None:
                        timeline.add(face.track, result.time_s, face.probabilities)
                last_faces = list(result.faces)
                stream.flush()
            if annotated is not None and result.image is not None:
                # Frames between analysed ones keep the last boxes drawn.
                annotated.write(result.image, last_faces)
    except VideoError as exc:
        return printable(str(exc))
    return None


def _write_empty(writer: Writer) -> None:
    """A whole document with no records (``[]`` in JSON, the header in CSV and the table)."""
    writer.begin()
    writer.end()


@contextmanager
def _no_stop() -> Iterator[list[int]]:
    """Files keep ``classify``'s stop signals (stop at once, nothing half-written kept)."""
    yield []


def _write_extras(opts: VideoOptions, summary: TrackSummary, timeline: Timeline | None,
                  name: str) -> None:
    """``--summary`` and ``--timeline``, each written atomically."""
    if opts.summary is not None:
        with atomic_output(opts.summary, force=opts.force) as stream:
            summary.write(stream, SUMMARY_SUFFIXES[opts.summary.suffix.lower()])
    if timeline is not None and opts.timeline is not None:
        png = io.BytesIO()
        draw_timeline(timeline, title=f"{name}: expression per track").save(png, format="PNG")
        check_output_path(opts.timeline, opts.force)
        force = opts.force
        with atomic_write(opts.timeline, "wb", place=lambda tmp, dst: _put_in_place(tmp, dst, force)) as f:
            f.write(png.getvalue())

