"""The ``fer-edge`` command: a thin click layer over the :mod:`fer_edge` library.

Exit status (also in ``--help`` and the README):

* 0: every input was classified (an image with no face found counts as classified);
* 1: some inputs failed, each named on stderr, all others still classified;
  or the model or a dependency could not be used;
* 2: usage error: unknown option, bad value, unavailable ``--provider``,
  ``--output`` file exists without ``--force``;
* 128 + N when stopped by signal N: 130 (SIGINT, Ctrl-C), 143 (SIGTERM),
  129 (SIGHUP); the temporary output file is removed first.

Example:
    >>> from click.testing import CliRunner
    >>> CliRunner().invoke(cli, ["--version"]).output.startswith("fer-edge ")
    True
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import sys
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence, TextIO

import click

from ._version import __version__
from .classifier import FACE_MODES, Classifier
from .detector import SHIPPED_DETECTORS, FaceDetector, shipped_detector
from .errors import DependencyError, FerEdgeError, ModelError, ProviderError
from .faces import CROP_MAX_SIDE, crop_shaped
from .files import PathArg, display_path, find_images, is_image_name, printable
from .metadata import describe_color_mode, describe_training_data
from .output import (
    FORMATS,
    OutputError,
    Writer,
    atomic_output,
    check_output_path,
    error_line,
    make_writer,
    write_error,
)
from .providers import available_providers, ort_version, resolve_providers
from .results import ImageResult
from .zoo import model_cards, resolve_model, shipped_models

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

EXIT_HELP = """\b
Exit status:
  0  every input classified
  1  some inputs failed (each named on stderr; all others still classified),
     or the model could not be used
  2  usage error (bad option or value, --output exists without --force)
  130, 143, 129  stopped by SIGINT (Ctrl-C), SIGTERM, SIGHUP"""

log = logging.getLogger("fer_edge")


@dataclass(frozen=True)
class ModelOptions:
    """How to build the :class:`Classifier` (``--model``, ``--provider``...)."""

    model: Path | None
    provider: str | None
    threads: int
    batch_size: int
    # ``--detector``/``--min-face`` (classify only); None: the Classifier's default detector.
    detector: str | None = None
    min_face: int | None = None


@dataclass(frozen=True)
class ClassifyOptions:
    """What ``fer-edge classify`` does with the results."""

    fmt: str
    output: Path | None
    force: bool
    faces: str
    annotate: Path | None
    progress: bool | None


class _EchoHandler(logging.Handler):
    """Log records as ``fer-edge: message`` lines on the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"fer-edge: {printable(record.getMessage())}", err=True)


def _setup_logging(verbose: int) -> None:
    """-v: provider, counts, summary; -vv: also each skipped file and Python warnings."""
    # Pillow logs some refusals itself, without the file name (which the file's
    # error line gives): shown, escaped, only with -vv, never as raw stderr lines.
    for name, level in (("fer_edge", logging.INFO if verbose else logging.WARNING),
                        ("py.warnings", logging.WARNING if verbose >= 2 else logging.ERROR),
                        ("PIL", logging.WARNING if verbose >= 2 else logging.CRITICAL + 1)):
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, _EchoHandler)]:
            logger.removeHandler(old)
        logger.addHandler(_EchoHandler())
        logger.setLevel(logging.DEBUG if verbose >= 2 and name == "fer_edge" else level)


@contextmanager
def _user_errors(debug: bool) -> Iterator[None]:
    """Turn errors into one ``Error: ...`` line (exit 1); tracebacks only with --debug."""
    try:
        yield
    except (click.ClickException, click.exceptions.Exit, click.Abort, BrokenPipeError):
        # click prints these itself (and exits quietly when a pipe reader left).
        raise
    except FerEdgeError as exc:
        if debug:
            raise
        raise click.ClickException(printable(str(exc))) from None
    except Exception as exc:  # the CLI boundary: a bug must still not dump a traceback
        if debug:
            raise
        raise click.ClickException(
            f"internal error ({type(exc).__name__}: {printable(str(exc))}); "
            "run again with --debug for the traceback"
        ) from None


def _load_classifier(opts: ModelOptions) -> Classifier:
    try:
        return Classifier(opts.model, providers=opts.provider, threads=opts.threads,
                          batch_size=opts.batch_size, detector=_detector(opts))
    except ProviderError as exc:
        if opts.provider is None:
            raise
        raise click.BadParameter(printable(str(exc)), param_hint="'--provider'") from None


def _detector(opts: ModelOptions) -> FaceDetector | None:
    """The detector ``--detector``/``--min-face`` ask for; None keeps the Classifier's default.

    The default is opened lazily, only for images that need detection; an
    explicit choice is opened here, with the providers and threads the model
    gets, as ``Classifier(detector=...)`` takes it.
    """
    if opts.detector is None and opts.min_face is None:
        return None
    return shipped_detector(opts.detector or SHIPPED_DETECTORS[0], providers=opts.provider,
                            threads=opts.threads, min_face=opts.min_face)


def _detector_param(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--detector``: a shipped detector's name (usage error listing them otherwise)."""
    if value is None or value in SHIPPED_DETECTORS:
        return value
    raise click.BadParameter(f"unknown face detector {printable(value)!r} (shipped detectors: "
                             f"{', '.join(SHIPPED_DETECTORS)})")


def _min_face_param(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    """``--min-face``: a positive number of pixels."""
    if value is not None and value < 1:
        raise click.BadParameter(f"must be a positive number of pixels, got {value}")
    return value


def _model_param(ctx: click.Context, param: click.Parameter, value: str | None) -> Path | None:
    """``--model``: a shipped model's name first, else an existing file (usage error otherwise)."""
    if value is None:
        return None
    try:
        path = resolve_model(value)  # the library's name-before-path rule, and its message
    except ModelError as exc:
        raise click.BadParameter(printable(str(exc))) from None
    if path.is_file():
        return path
    names = ", ".join(shipped_models()) or "none installed"
    what = "is a directory, not a model file" if path.is_dir() else "no such model file"
    raise click.BadParameter(f"{printable(value)}: {what} (shipped models: {names})")


def _model_options(func: Callable) -> Callable:
    decorators = [
        click.option("--model", metavar="NAME|FILE", callback=_model_param,
                     help="A shipped model by name (see `fer-edge models`: default, fast...) "
                          "or an ONNX file written by `python -m export` [default: default]."),
        click.option("--provider", metavar="NAME",
                     help="Execution provider(s), used exactly or failing with the list of "
                          "available ones: cpu, cuda, tensorrt, coreml, directml, a full ONNX "
                          "Runtime name, or a comma-separated list. [default: best available]"),
        click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
                     help="ONNX Runtime intra-op threads (0: let it decide)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
                     help="Images (face crops) per inference call."),
    ]
    for deco in reversed(decorators):
        func = deco(func)
    return func


def _common_options(func: Callable) -> Callable:
    func = click.option("--debug", is_flag=True,
                        help="Show Python tracebacks for errors.")(func)
    return click.option("-v", "--verbose", count=True,
                        help="Report provider, counts, skipped files (-vv: list them).")(func)


class _Group(click.Group):
    """The ``fer-edge`` command group; a path where a command belongs gets a hint.

    ``fer-edge photos/`` is a natural first try; click alone would answer only
    "No such command".
    """

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError:
            name = args[0] if args else ""
            if not _looks_like_path(name):
                raise
            ctx.fail(f"No such command {name!r}. To classify images, run:\n\n"
                     f"    fer-edge classify {shlex.join(args)}")


def _looks_like_path(word: str) -> bool:
    """Whether an unknown command word is more likely a file or folder to classify."""
    if not word or word.startswith("-"):
        return False
    return (os.path.exists(word) or "/" in word or os.sep in word
            or is_image_name(word))


@click.group(cls=_Group, epilog=EXIT_HELP,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="fer-edge",
                      message="%(prog)s %(version)s")
def cli() -> None:
    """Facial-expression recognition on photos with ONNX Runtime."""


# -- classify ---------------------------------------------------------------


class _Progress:
    """A one-line ``\\r`` progress counter on stderr that error lines can interrupt."""

    def __init__(self, total: int, enabled: bool, stream: TextIO) -> None:
        self.total, self.enabled, self.stream = total, enabled, stream
        self.done, self._last, self._shown = 0, 0.0, False

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            pct = 100 * self.done // max(self.total, 1)
            self.stream.write(f"\rclassifying {self.done}/{self.total} ({pct}%)")
            self.stream.flush()
            self._shown = True

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\r\033[K")
            self._shown = False

    def finish(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self._shown = False


@dataclass
class _Tally:
    images: int = 0
    faces: int = 0
    failed: int = 0
    #: Square-ish images larger than a face crop in which the detector found no face.
    faceless_squares: int = 0


def _report_failure(progress: _Progress, message: str) -> None:
    progress.clear()
    click.echo(message, err=True)


@contextmanager
def _result_stream(output: Path | None, force: bool) -> Iterator[TextIO]:
    if output is None:
        try:
            yield sys.stdout
            sys.stdout.flush()
        except OSError as exc:
            failure = write_error(exc, "standard output")
            if failure is None:
                raise
            # What could not be written must not be retried at exit (a second message).
            sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115
            raise failure from None
        return
    with atomic_output(output, force=force) as stream:
        yield stream


def _write_annotated(src: Path, result: ImageResult, out_dir: Path) -> Path:
    """Save a copy of ``src`` with its face boxes drawn into ``out_dir``.

    fer_edge.annotate picks a name that does not exist yet and creates it
    exclusively, so neither an input nor an earlier copy is ever overwritten.
    """
    from . import annotate as annotation  # lazy: only --annotate needs it
    from .preprocess import load_image

    image = annotation.annotate(load_image(src), result.faces)
    try:
        return annotation.save_annotated(image, src, out_dir)
    except (OSError, ValueError) as exc:
        raise OutputError(f"{display_path(src)}: cannot write an annotated copy into "
                          f"{display_path(out_dir)} ({exc})") from None


def _check_not_an_input(output: Path, inputs: Sequence[PathArg], found_in: str = "") -> None:
    """Usage error when ``output`` is one of ``inputs``: writing results there would destroy an image."""
    target = os.path.realpath(output)
    if any(os.path.realpath(p) == target for p in inputs):
        raise click.BadParameter(f"{display_path(output)} is also an input{found_in}; results would overwrite it",
                                 param_hint="'--output'")


def _check_usage(paths: Sequence[PathArg], opts: ClassifyOptions) -> None:
    """Usage errors (exit 2) found before any work is done."""
    if any(os.fspath(p) == "" for p in paths):
        # An empty argument (an unset shell variable) names nothing; taking it
        # as the current folder would classify whatever happens to be there.
        raise click.BadParameter("an empty path names no file or folder",
                                 param_hint="'PATHS...'")
    if opts.output is not None:
        try:
            check_output_path(opts.output, opts.force)
        except OutputError as exc:
            raise click.BadParameter(printable(str(exc)), param_hint="'--output'") from None
        _check_not_an_input(opts.output, paths)
    if opts.annotate is not None and opts.annotate.exists() and not opts.annotate.is_dir():
        raise click.BadParameter(f"{display_path(opts.annotate)} is not a folder",
                                 param_hint="'--annotate'")


#: ``--engine`` choices; the first is the default.
ENGINES = ("local", "ray")


def _check_engine(engine: str, opts: ClassifyOptions, address: str | None,
                  workers: int | None) -> None:
    """Usage errors (exit 2) of options that only one engine has."""
    if engine != "ray":
        for name, value in (("--ray-address", address), ("--workers", workers)):
            if value is not None:
                raise click.BadParameter("needs --engine ray", param_hint=f"'{name}'")
        if opts.fmt == "parquet":
            raise click.BadParameter("parquet needs --engine ray", param_hint="'--format'")
        return
    if opts.annotate is not None:
        # Annotated copies are drawn from the original files on this machine;
        # the Ray engine's inputs may live on a cluster or in object storage.
        raise click.BadParameter("works with --engine local only", param_hint="'--annotate'")
    if opts.fmt == "parquet" and opts.output is None:
        raise click.BadParameter("parquet is binary: give a file with -o/--output",
                                 param_hint="'--format'")


def run_classify(paths: Sequence[PathArg], opts: ClassifyOptions, model: ModelOptions) -> int:
    """Classify files and folders, write the results; returns the exit status."""
    _check_usage(paths, opts)
    clf = _load_classifier(model)
    scan = find_images(paths)
    if opts.output is not None and opts.output.exists():
        # An image found by walking a folder counts too: `-o photos/a.jpg --force` on photos/.
        # Only an existing output can be one of them: no realpath per file otherwise.
        _check_not_an_input(opts.output, scan.files, " (found in the folders given)")
    log.info("%d files to classify; %d skipped in folders (not an image extension, hidden, "
             "or an --annotate copy)",
             len(scan.files), len(scan.skipped))
    for path in scan.skipped:
        log.debug("skipped %s", display_path(path))
    for folder in scan.revisits:
        log.debug("not walking %s again (symbolic link to a folder already walked)",
                  display_path(folder))
    if not scan.files and not scan.failures:
        log.warning("no image files found in %s", ", ".join(display_path(p) for p in paths))
    progress = _Progress(len(scan.files), _progress_enabled(opts.progress, len(scan.files),
                                                            clf.batch_size),
                         sys.stderr)
    tally = _Tally()
    shown_in_results = _failures_shown_in_results(opts)
    with _result_stream(opts.output, opts.force) as stream:
        writer = make_writer(opts.fmt, stream, clf.labels)
        writer.begin()
        for path, reason in scan.failures:
            failed = ImageResult.failed(display_path(path), f"{display_path(path)}: {reason}")
            writer.write(failed)
            tally.failed += 1
            if not shown_in_results:
                _report_failure(progress, error_line(failed))
        try:
            _write_results(clf, scan.files, opts, writer, stream, progress, tally, shown_in_results)
        except BaseException:
            # Whatever stopped the run (a model failure, Ctrl-C), the document on stdout
            # stays whole: closed, with every image classified so far. (A -o file is
            # only ever replaced by a complete run: atomic_output discards it.)
            with suppress(Exception):
                writer.end()
            raise
        writer.end()
    progress.finish()
    log.info("%d images, %d faces, %d failed, %d skipped", tally.images, tally.faces,
             tally.failed, len(scan.skipped))
    if tally.faceless_squares and opts.faces == "auto":
        # Face crops larger than CROP_MAX_SIDE (AffectNet's 224 px, say) go to the detector,
        # which often finds no face in a crop that tight: say how to classify them whole.
        log.warning("no face found in %d square image(s) larger than %d px; if they are face crops "
                    "already, --faces off classifies each image whole", tally.faceless_squares,
                    CROP_MAX_SIDE)
    return EXIT_FAILED if tally.failed else EXIT_OK


def _write_results(clf: Classifier, files: Sequence[Path], opts: ClassifyOptions, writer: Writer,
                   stream: TextIO, progress: _Progress, tally: _Tally, shown_in_results: bool) -> None:
    """Classify ``files`` in batches and write each result as soon as it is known."""
    results = clf.analyze_iter(files, faces=opts.faces, errors="record")
    for src, result in zip(files, results):
        writer.write(result)
        progress.advance()
        tally.images += 1
        tally.faces += len(result.faces)
        if result.ok and result.detected and not result.faces and crop_shaped(result.width, result.height):
            tally.faceless_squares += 1
        if not result.ok:
            tally.failed += 1
            if not shown_in_results:
                _report_failure(progress, error_line(result))
        elif opts.annotate is not None:
            try:
                written = _write_annotated(src, result, opts.annotate)
                log.debug("annotated copy: %s", display_path(written))
            except FerEdgeError as exc:
                tally.failed += 1
                _report_failure(progress, f"fer-edge: error: {printable(str(exc))}")
        stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def _failures_shown_in_results(opts: ClassifyOptions) -> bool:
    """Whether the person at the terminal already sees each failure in the results.

    A table printed on the terminal where stderr also goes has an ``ERROR`` row
    per failed file; the stderr line would report the same failure a second
    time. Any other case (results in a file or a pipe, a machine format,
    stderr redirected) keeps the stderr line: there it is the only one the
    person, or the log, gets.
    """
    return (opts.fmt == "table" and opts.output is None
            and _is_terminal(sys.stdout) and _is_terminal(sys.stderr))


def _progress_enabled(flag: bool | None, total: int, batch_size: int) -> bool:
    if flag is not None:
        return flag
    # Automatic: only on a terminal, and only when there is more than one batch.
    return sys.stderr.isatty() and total > batch_size


@cli.command(epilog=EXIT_HELP)
# Kept as typed (str, not Path): a trailing "/" says a folder was meant, which
# the report for a missing path uses (fer_edge.files.missing_reason).
# readable=False: an unreadable input is recorded like any bad file (the rest go on),
# not refused as a usage error by click's os.access check before anything runs.
@click.argument("paths", nargs=-1, required=True, type=click.Path(readable=False))
@click.option("--format", "fmt", type=click.Choice((*FORMATS, "parquet")), default=FORMATS[0],
              show_default=True,
              help="table: for people; json: one array of records; jsonl: one record per "
                   "line; csv: one row per face; parquet: one row per image (--engine ray, "
                   "with -o).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, readable=False, path_type=Path),
              help="Write results to FILE (atomically) instead of stdout.")
@click.option("--force", is_flag=True, help="Allow --output to replace an existing file.")
@click.option("--faces", type=click.Choice(FACE_MODES), default="auto", show_default=True,
              help="Face detection: auto (detect unless the image is already a face crop), "
                   "on, off (classify the whole image).")
@click.option("--annotate", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Write copies with face boxes and labels into DIR (inputs are never "
                   "overwritten).")
@click.option("--detector", metavar="NAME", callback=_detector_param,
              help=f"Face detector: {', '.join(SHIPPED_DETECTORS)}. [default: {SHIPPED_DETECTORS[0]}]")
@click.option("--min-face", type=int, metavar="PX", callback=_min_face_param,
              help="Smallest face side to look for, in pixels [default: about 5% of the photo's "
                   "longer side]; smaller is slower (24 in a 1920x1080 photo: ~14x).")
@_model_options
@click.option("--progress/--no-progress", default=None,
              help="Progress counter on stderr [default: on a terminal, for more than one batch].")
@click.option("--engine", type=click.Choice(ENGINES), default=ENGINES[0], show_default=True,
              help="local: this process; ray: a Ray cluster (pip install '.[ray]'; "
                   "PATHS may then also be URIs such as s3://bucket/photos; records come in "
                   "the order batches finish).")
@click.option("--ray-address", metavar="ADDR",
              help="Ray cluster to run on (host:port, ray://host:10001, auto) "
                   "[default: start Ray on this machine].")
@click.option("--workers", type=click.IntRange(min=1),
              help="Ray actors, each holding one model [default: one per GPU, else per CPU].")
@_common_options
@click.pass_context
def classify(ctx: click.Context, paths: tuple[str, ...], fmt: str, output: Path | None,
             force: bool, faces: str, annotate: Path | None, detector: str | None,
             min_face: int | None, model: Path | None,
             provider: str | None, threads: int, batch_size: int, progress: bool | None,
             engine: str, ray_address: str | None, workers: int | None,
             verbose: int, debug: bool) -> None:
    """Classify the facial expression in image files and folders.

    Folders are walked recursively; inside them only files with an image
    extension Pillow reads are taken (others, hidden files and the
    *.annotated.png copies --annotate writes are skipped; -v counts them).
    Files named explicitly are always attempted. Each file that fails gets an
    error record in the output and one line on stderr (no stderr line when
    the table is on the terminal: its ERROR row is the report).
    """
    _setup_logging(verbose)
    opts = ClassifyOptions(fmt, output, force, faces, annotate, progress)
    _check_engine(engine, opts, ray_address, workers)
    if engine == "ray":
        for name, value in (("--detector", detector), ("--min-face", min_face)):
            if value is not None:  # the Ray workers open the default detector
                raise click.BadParameter("works with --engine local only", param_hint=f"'{name}'")
        with _user_errors(debug):
            from .distributed import run_cli  # lazy: the local engine never imports Ray

            code = run_cli(paths, opts, ModelOptions(model, provider, threads, batch_size),
                           ray_address, workers, verbose)
        ctx.exit(code)
    with _user_errors(debug):
        try:
            code = run_classify(paths, opts, ModelOptions(model, provider, threads, batch_size,
                                                          detector, min_face))
        except DependencyError as exc:
            raise DependencyError(f"{exc}; or pass --faces off to classify each image "
                                  "whole") from None
    ctx.exit(code)


# -- video ------------------------------------------------------------------


@cli.command(epilog=EXIT_HELP)
@click.argument("source", required=False)
@click.option("--camera", type=click.IntRange(min=0), metavar="N",
              help="Read local camera N (Linux: /dev/videoN; macOS: AVFoundation) instead of SOURCE.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=FORMATS[0], show_default=True,
              help="As for classify; one record per face per analysed frame.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, readable=False, path_type=Path),
              help="Write records to FILE (atomically) instead of stdout.")
@click.option("--force", is_flag=True, help="Allow every output file to replace an existing one.")
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
              help="Analyse every Nth frame.")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), metavar="F",
              help="Analyse at most F frames per second of video.")
@click.option("--detect-every", type=click.IntRange(min=1), default=1, show_default=True,
              metavar="N",
              help="Run the face detector on every Nth analysed frame only; in between, carry "
                   "each face's box forward by its motion (records say detected=false). Faster; "
                   "a new face shows up to N-1 analysed frames late.")
@click.option("--start", type=click.FloatRange(min=0), metavar="SECONDS", help="Files: start here.")
@click.option("--end", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Stop at this time.")
@click.option("--smooth", is_flag=True,
              help="Average each track's probabilities over time (EMA), so labels do not flicker.")
@click.option("--smooth-alpha", type=click.FloatRange(0, 1, min_open=True), default=0.3,
              show_default=True, help="With --smooth: weight of the newest frame.")
@click.option("--summary", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Per-track summary (frames, first/last time, share per label, dominant "
                   "label) as .json or .csv.")
@click.option("--timeline", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE.png",
              help="Chart of each track's expression probabilities over time.")
@click.option("--annotate", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write the video with boxes, track ids and labels (.mp4, .mkv, .mov, .avi, "
                   ".webm); same size and frame rate.")
@_model_options
@_common_options
def video(source: str | None, camera: int | None, fmt: str, output: Path | None, force: bool,
          every: int, fps: float | None, detect_every: int, start: float | None, end: float | None,
          smooth: bool, smooth_alpha: float, summary: Path | None, timeline: Path | None,
          annotate: Path | None,
          model: Path | None, provider: str | None, threads: int, batch_size: int,
          verbose: int, debug: bool) -> None:
    """Track faces and their expressions in a video file, camera or stream.

    SOURCE is a video file or a URL FFmpeg opens (rtsp://, http://...).
    Needs the video extra: pip install '.[video]' (or pip install av). Files never drop
    frames; a live source drops frames when analysis falls behind (counted on
    stderr) and runs until Ctrl-C, which completes every output (exit 0).
    A truncated file is analysed up to where decoding stopped (named on
    stderr; exit 1).
    """
    _setup_logging(verbose)
    with _user_errors(debug):
        from .video_cli import VideoOptions, run_video  # lazy: PyAV and charts only here

        opts = VideoOptions(fmt, output, force, every, fps, start, end,
                            smooth_alpha if smooth else None, summary, timeline, annotate,
                            detect_every)
        code = run_video(source, camera, opts, ModelOptions(model, provider, threads, batch_size))
    sys.exit(code)


# -- info -------------------------------------------------------------------


def _describe_temperature(m: dict) -> str:
    """The softmax temperature and, when it was fitted, the ECE it bought on val."""
    text = f"{m['temperature']:g} (probabilities = softmax(logits / T))"
    cal = m["extra"].get("calibration")
    if isinstance(cal, dict) and {"ece_before", "ece_after", "ece_cv_after"} <= cal.keys():
        text += (f"; val ECE {cal['ece_before']:.4f} -> {cal['ece_after']:.4f} "
                 f"(2-fold CV {cal['ece_cv_after']:.4f})")
    elif m["temperature"] == 1.0:
        text += "; not calibrated"
    return text


def _describe_precision(precision: str, weights: str | None) -> str:
    """The compute precision, and the weights' storage type when it differs.

    Example:
        >>> _describe_precision("fp32", "fp16"), _describe_precision("int8", None)
        ('fp32, fp16 weights', 'int8')
    """
    return f"{precision}, {weights} weights" if weights and weights != precision else precision


def _print_info(d: dict) -> None:
    m = d["model"]
    precision = _describe_precision(m["precision"], m["extra"].get("weights_storage"))
    p = m["preprocess"]
    rows = [
        ("model", d["model_path"]),
        ("labels", ", ".join(m["labels"])),
        ("input", f"{p['input_size']}x{p['input_size']}, {describe_color_mode(p['color_mode'])}, "
                  f"mean {p['mean']}, std {p['std']}"),
        ("architecture", f"{m['model_name']} ({precision}, tta {m['tta']})"),
        ("version", m["model_version"]),
        ("trained on", describe_training_data(m["training_data"]) or "-"),
        ("val accuracy", "-" if m["val_accuracy"] is None else f"{m['val_accuracy']:.4f}"),
        ("val macro-F1", "-" if m["val_macro_f1"] is None else f"{m['val_macro_f1']:.4f}"),
        ("temperature", _describe_temperature(m)),
        ("exported", f"{m['export_date'] or '-'} by fer-edge {m['exporter_version'] or '-'}"),
        ("running on", f"{d['provider']} (session: {', '.join(d['session_providers'])})"),
    ]
    for key, value in rows:
        click.echo(f"{key + ':':<14}{value}")


@cli.command(epilog=EXIT_HELP)
@click.option("--model", metavar="NAME|FILE", callback=_model_param,
              help="Shipped model name or ONNX file to describe [default: default].")
@click.option("--provider", metavar="NAME", help="Execution provider(s), as for classify.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_common_options
def info(model: Path | None, provider: str | None, as_json: bool, verbose: int,
         debug: bool) -> None:
    """Show the model's metadata, the execution providers, and versions."""
    _setup_logging(verbose)
    with _user_errors(debug):
        if provider is not None:
            try:
                resolve_providers(provider)
            except ProviderError as exc:
                raise click.BadParameter(printable(str(exc)), param_hint="'--provider'") from None
        if not as_json:
            # Printed before loading, so a broken install still tells what it has.
            click.echo(f"{'fer-edge:':<14}{__version__} (onnxruntime {ort_version()})")
            click.echo(f"{'providers:':<14}{', '.join(available_providers())}")
        d = _load_classifier(ModelOptions(model, provider, 0, 32)).describe()
        if as_json:
            click.echo(json.dumps(d, indent=2, ensure_ascii=False))
        else:
            _print_info(d)


# -- models -----------------------------------------------------------------


def _cell(value: object, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def _timed_on(card: dict) -> str:
    """Where a model's speed was measured: ``AMD EPYC, 2 threads`` (``-`` when not recorded)."""
    machine, threads = card.get("speed_machine"), card.get("speed_threads")
    if not machine:
        return "-"
    return f"{machine}, {threads} threads" if threads else str(machine)


def _print_models(cards: list[dict]) -> None:
    # Each file's speed was timed where it was exported: the machine column says where, as
    # figures from different CPUs are not comparable (int8 especially: VNNI or not).
    head = ("name", "labels", "input", "precision", "size", "val acc", "ms/img b1", "ms/img b32",
            "timed on", "architecture")
    rows = [(c["name"], ",".join(c["labels"]), f"{c['input_size']}px",
             _describe_precision(c["precision"], c["weights"]),
             f"{c['size_bytes'] / 1e6:.1f} MB", _cell(c["val_accuracy"], "{:.2%}"),
             _cell(c["ms_per_image_b1"], "{:.3f}"), _cell(c["ms_per_image_b32"], "{:.3f}"),
             _timed_on(c), c["architecture"]) for c in cards]
    widths = [max(len(str(r[i])) for r in (head, *rows)) for i in range(len(head))]
    for row in (head, *rows):
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())


@cli.command(epilog=EXIT_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")
@_common_options
def models(as_json: bool, verbose: int, debug: bool) -> None:
    """List the shipped models: labels, input, precision, size, val accuracy, speed.

    Everything is read from each model file's metadata; speed is what export
    measured on the machine named in "timed on" (ms per image on the CPU; "-" when
    not recorded): figures timed on different CPUs are not comparable.
    Use a name with --model: `fer-edge classify --model fast photos/`.
    """
    _setup_logging(verbose)
    with _user_errors(debug):
        cards = model_cards()
        if as_json:
            click.echo(json.dumps(cards, indent=2, ensure_ascii=False))
        else:
            _print_models(cards)


class Stopped(BaseException):
    """Raised by a stop signal, so every ``finally`` runs (temporary files removed).

    A BaseException, like KeyboardInterrupt: no ``except Exception`` may swallow it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


#: Signals that stop a run cleanly; the exit status is 128 + the signal number
#: (130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP), as shells expect.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, name))


def _raise_stopped(signum: int, _frame: object) -> None:
    raise Stopped(signum)


@contextmanager
def _stop_signals() -> Iterator[None]:
    """While inside, :data:`STOP_SIGNALS` raise :class:`Stopped` (main thread only)."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup's SIGHUP stays ignored
                previous[sig] = signal.signal(sig, _raise_stopped)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``fer-edge``); exits with the status above."""
    # Library warnings (Pillow's EXIF complaints...) go through logging: -vv shows them.
    logging.captureWarnings(True)
    try:
        with _stop_signals():
            cli.main(args=list(argv) if argv is not None else None, prog_name="fer-edge")
    except Stopped as stop:
        click.echo(f"fer-edge: stopped by {signal.Signals(stop.signum).name}", err=True)
        sys.exit(128 + stop.signum)
