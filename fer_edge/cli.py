"""The ``fer-edge`` command: a thin click layer over the :mod:`fer_edge` library.

Exit status (also in ``--help`` and the README):

* 0: every input was classified (an image with no face found counts as classified);
* 1: some inputs failed, each named on stderr, all others still classified;
  or the model or a dependency could not be used;
* 2: usage error: unknown option, bad value, unavailable ``--provider``,
  ``--output`` file exists without ``--force``.

Example:
    >>> from click.testing import CliRunner
    >>> CliRunner().invoke(cli, ["--version"]).output.startswith("fer-edge ")
    True
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence, TextIO

import click

from . import __version__
from .classifier import FACE_MODES, Classifier
from .errors import DependencyError, FerEdgeError, ProviderError
from .files import display_path, find_images, printable
from .output import FORMATS, OutputError, atomic_output, check_output_path, error_line, make_writer
from .providers import available_providers, ort_version, resolve_providers
from .results import ImageResult

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

EXIT_HELP = """\b
Exit status:
  0  every input classified
  1  some inputs failed (each named on stderr; all others still classified),
     or the model could not be used
  2  usage error (bad option or value, --output exists without --force)"""

log = logging.getLogger("fer_edge")


@dataclass(frozen=True)
class ModelOptions:
    """How to build the :class:`Classifier` (``--model``, ``--provider``...)."""

    model: Path | None
    provider: str | None
    threads: int
    batch_size: int


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
    for name, level in (("fer_edge", logging.INFO if verbose else logging.WARNING),
                        ("py.warnings", logging.WARNING if verbose >= 2 else logging.ERROR)):
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
                          batch_size=opts.batch_size)
    except ProviderError as exc:
        if opts.provider is None:
            raise
        raise click.BadParameter(printable(str(exc)), param_hint="'--provider'") from None


def _model_options(func: Callable) -> Callable:
    decorators = [
        click.option("--model", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="ONNX model written by `python -m export` [default: the shipped model]."),
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


@click.group(epilog=EXIT_HELP, context_settings={"help_option_names": ["-h", "--help"]})
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


def _report_failure(progress: _Progress, message: str) -> None:
    progress.clear()
    click.echo(message, err=True)


@contextmanager
def _result_stream(output: Path | None, force: bool) -> Iterator[TextIO]:
    if output is None:
        yield sys.stdout
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


def _check_usage(paths: Sequence[Path], opts: ClassifyOptions) -> None:
    """Usage errors (exit 2) found before any work is done."""
    if opts.output is not None:
        try:
            check_output_path(opts.output, opts.force)
        except OutputError as exc:
            raise click.BadParameter(printable(str(exc)), param_hint="'--output'") from None
        if any(os.path.realpath(p) == os.path.realpath(opts.output) for p in paths):
            raise click.BadParameter("is also an input; results would overwrite it",
                                     param_hint="'--output'")
    if opts.annotate is not None and opts.annotate.exists() and not opts.annotate.is_dir():
        raise click.BadParameter(f"{display_path(opts.annotate)} is not a folder",
                                 param_hint="'--annotate'")


def run_classify(paths: Sequence[Path], opts: ClassifyOptions, model: ModelOptions) -> int:
    """Classify files and folders, write the results; returns the exit status."""
    _check_usage(paths, opts)
    clf = _load_classifier(model)
    scan = find_images(paths)
    log.info("%d files to classify; %d skipped in folders (not an image extension, or hidden)",
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
    with _result_stream(opts.output, opts.force) as stream:
        writer = make_writer(opts.fmt, stream, clf.labels)
        writer.begin()
        for path, reason in scan.failures:
            failed = ImageResult.failed(display_path(path), f"{display_path(path)}: {reason}")
            writer.write(failed)
            tally.failed += 1
            _report_failure(progress, error_line(failed))
        results = clf.analyze_iter(scan.files, faces=opts.faces, errors="record")
        for src, result in zip(scan.files, results):
            writer.write(result)
            progress.advance()
            tally.images += 1
            tally.faces += len(result.faces)
            if not result.ok:
                tally.failed += 1
                _report_failure(progress, error_line(result))
            elif opts.annotate is not None:
                try:
                    written = _write_annotated(src, result, opts.annotate)
                    log.debug("annotated copy: %s", display_path(written))
                except FerEdgeError as exc:
                    tally.failed += 1
                    _report_failure(progress, f"fer-edge: error: {printable(str(exc))}")
            stream.flush()
        writer.end()
    progress.finish()
    log.info("%d images, %d faces, %d failed, %d skipped", tally.images, tally.faces,
             tally.failed, len(scan.skipped))
    return EXIT_FAILED if tally.failed else EXIT_OK


def _progress_enabled(flag: bool | None, total: int, batch_size: int) -> bool:
    if flag is not None:
        return flag
    # Automatic: only on a terminal, and only when there is more than one batch.
    return sys.stderr.isatty() and total > batch_size


@cli.command(epilog=EXIT_HELP)
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=FORMATS[0],
              show_default=True,
              help="table: for people; json: one array of records; jsonl: one record per "
                   "line; csv: one row per face.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write results to FILE (atomically) instead of stdout.")
@click.option("--force", is_flag=True, help="Allow --output to replace an existing file.")
@click.option("--faces", type=click.Choice(FACE_MODES), default="auto", show_default=True,
              help="Face detection: auto (detect unless the image is already a face crop), "
                   "on, off (classify the whole image).")
@click.option("--annotate", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Write copies with face boxes and labels into DIR (inputs are never "
                   "overwritten).")
@_model_options
@click.option("--progress/--no-progress", default=None,
              help="Progress counter on stderr [default: on a terminal, for more than one batch].")
@_common_options
@click.pass_context
def classify(ctx: click.Context, paths: tuple[Path, ...], fmt: str, output: Path | None,
             force: bool, faces: str, annotate: Path | None, model: Path | None,
             provider: str | None, threads: int, batch_size: int, progress: bool | None,
             verbose: int, debug: bool) -> None:
    """Classify the facial expression in image files and folders.

    Folders are walked recursively; inside them only files with an image
    extension Pillow reads are taken (others, and hidden files, are skipped;
    -v counts them). Files named explicitly are always attempted. Each file
    that fails gets one line on stderr and an error record in the output.
    """
    _setup_logging(verbose)
    opts = ClassifyOptions(fmt, output, force, faces, annotate, progress)
    with _user_errors(debug):
        try:
            code = run_classify(paths, opts, ModelOptions(model, provider, threads, batch_size))
        except DependencyError as exc:
            raise DependencyError(f"{exc}; or pass --faces off to classify each image "
                                  "whole") from None
    ctx.exit(code)


# -- info -------------------------------------------------------------------


def _print_info(d: dict) -> None:
    m = d["model"]
    p = m["preprocess"]
    rows = [
        ("model", d["model_path"]),
        ("labels", ", ".join(m["labels"])),
        ("input", f"{p['input_size']}x{p['input_size']} {p['color_mode']}, mean {p['mean']}, "
                  f"std {p['std']}"),
        ("architecture", f"{m['model_name']} ({m['precision']}, tta {m['tta']})"),
        ("version", m["model_version"]),
        ("trained on", m["training_data"] or "-"),
        ("val accuracy", "-" if m["val_accuracy"] is None else f"{m['val_accuracy']:.4f}"),
        ("val macro-F1", "-" if m["val_macro_f1"] is None else f"{m['val_macro_f1']:.4f}"),
        ("exported", f"{m['export_date'] or '-'} by fer-edge {m['exporter_version'] or '-'}"),
        ("running on", f"{d['provider']} (session: {', '.join(d['session_providers'])})"),
    ]
    for key, value in rows:
        click.echo(f"{key + ':':<14}{value}")


@cli.command(epilog=EXIT_HELP)
@click.option("--model", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="ONNX model to describe [default: the shipped model].")
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


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``fer-edge``); exits with the status above."""
    # Library warnings (Pillow's EXIF complaints...) go through logging: -vv shows them.
    logging.captureWarnings(True)
    cli.main(args=list(argv) if argv is not None else None, prog_name="fer-edge")
