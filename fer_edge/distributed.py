"""Classifying millions of images on a Ray cluster (``fer-edge classify --engine ray``).

The same work as the local engine, spread over a cluster with Ray Data:

1. files are listed and read by Ray tasks (:func:`ray.data.read_datasource`
   with a binary-file datasource, as ``ray.data.read_binary_files`` does, so
   any file system Ray reads works: local or shared folders, ``s3://``,
   ``gs://``...);
2. a pool of actors, each holding one :class:`~fer_edge.Classifier` (one ONNX
   Runtime session, a GPU each when the cluster has them), decodes,
   preprocesses and classifies the bytes with
   :meth:`Classifier.analyze_batch` on :class:`~fer_edge.preprocess.EncodedImage`
   inputs: the local engine's own code path, so the records are the same;
3. the result is a Ray Dataset of records (:func:`record_schema`), written by
   the CLI as JSON/JSONL/CSV/table or Parquet, or by the caller's program
   anywhere Ray writes (``ds.write_parquet("s3://...")``).

Ray is an optional dependency (``pip install '.[ray]'`` in a checkout): this module
imports it only when called, and nothing else in :mod:`fer_edge` imports this
module, so ``import fer_edge`` and the local engine never load Ray.

Order: records come in the order batches finish, not the input order (Ray
Data does not keep order unless asked; ``preserve_order=True`` does, at some
cost in throughput). Sort by ``path`` when order matters.

Example (needs Ray; not run by the doctests):
    >>> from fer_edge.distributed import classify_dataset  # doctest: +SKIP
    >>> ds = classify_dataset(["photos/"], workers=4)  # doctest: +SKIP
    >>> ds.write_parquet("s3://bucket/fer-results/")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from .classifier import Classifier
from .errors import DependencyError, FerEdgeError
from .files import IMAGE_EXTENSIONS, PathArg, display_path, find_images
from .preprocess import EncodedImage
from .providers import ProvidersArg, canonical_name
from .results import FaceResult, ImageResult, Prediction

if TYPE_CHECKING:  # only for annotations: Ray and pyarrow stay optional
    import pyarrow as pa
    import ray.data

log = logging.getLogger("fer_edge")

#: The extra that installs Ray Data (named in the error when Ray is missing).
RAY_EXTRA = ".[ray]"
#: Seconds to wait for a TCP connection to ``--ray-address`` before giving up:
#: an unreachable cluster must be one error line well within 30 s.
CONNECT_TIMEOUT_S = 10.0
#: Seconds a child process may take to connect to ``--ray-address`` (a real
#: head answers in 1-3 s); with Python's start-up the error comes within ~20 s.
PROBE_TIMEOUT_S = 15.0
#: Logical CPUs left free for Ray's read tasks when sizing the actor pool: each
#: read task asks for 1 CPU, and an actor pool holding every CPU starves them
#: (measured here: 2 actors x 1 CPU on 2 cores hung; 2 x 0.5 ran).
READ_CPU_RESERVE = 1.0
#: Columns of the dataset that the reader produces.
_BYTES, _PATH, _READ_ERROR = "bytes", "path", "read_error"


class ClusterError(FerEdgeError):
    """The Ray cluster cannot be reached or used (the message says why)."""


def _import_ray() -> Any:
    """Import Ray Data, or raise :class:`DependencyError` naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401  (the submodule needs its own import)
    except ImportError as exc:
        raise DependencyError(
            f"the Ray engine needs Ray Data, which is not installed ({exc}); "
            f"install it with: pip install '{RAY_EXTRA}' in a fer-edge checkout"
        ) from None
    return ray


def is_uri(source: PathArg) -> bool:
    """Whether a source names a file system by scheme (``s3://...``) rather than a local path.

    Example:
        >>> is_uri("s3://bucket/photos"), is_uri("photos/"), is_uri("C:/x")
        (True, False, False)
    """
    text = os.fspath(source)
    scheme, sep, _ = text.partition("://")
    # A one-letter "scheme" is a Windows drive; "local://" is Ray's, kept as a URI.
    return bool(sep) and len(scheme) > 1 and scheme.replace("+", "").isalnum()


# -- connecting ---------------------------------------------------------------


def _check_reachable(address: str, timeout: float) -> None:
    """Fail fast, with one clear line, when nothing answers at ``host:port``.

    ``ray.init`` on an unreachable address retries for a minute or more; a TCP
    connect with a timeout tells the user within seconds.
    """
    target = address.split("://", 1)[1] if "://" in address else address
    host, sep, port_text = target.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        # Not host:port ("auto", a cluster name): Ray resolves and reports it.
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port_text)), timeout=timeout):
            pass
    except OSError as exc:
        why = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
        raise ClusterError(f"cannot reach the Ray cluster at {address} ({why})") from None


#: Run in a child process by :func:`_probe_cluster`: connect, then say so.
_PROBE = ("import logging, sys, ray; "
          "ray.init(address=sys.argv[1], logging_level=logging.ERROR, log_to_driver=False); "
          "print('connected')")


def _probe_cluster(address: str, timeout: float) -> None:
    """Connect once in a child process that is killed after ``timeout`` seconds.

    A port that accepts connections but is no Ray head (a proxy, another
    service, a stopped head behind a load balancer) makes ``ray.init`` retry
    for minutes while Ray's C++ client prints a warning every few seconds;
    no setting bounds that in-process. The child's output is kept from the
    user; its last error line becomes the message.
    """
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED=os.environ.get("RAY_USAGE_STATS_ENABLED", "0"))
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE, address], capture_output=True,
                              text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired as exc:
        partial = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
        raise ClusterError(f"no Ray cluster answered at {address} within {timeout:.0f} s"
                           f"{_gcs_reason(partial or '')}") from None
    if proc.returncode != 0 or "connected" not in proc.stdout:
        errors = [line.strip() for line in proc.stderr.splitlines()
                  if "Error" in line.split(":", 1)[0] and not line.startswith("[")]
        why = errors[-1] if errors else f"exit status {proc.returncode}"
        raise ClusterError(f"cannot connect to the Ray cluster at {address} ({why})"
                           f"{_gcs_reason(proc.stderr)}")


def _gcs_reason(stderr: str) -> str:
    """What Ray's client last said about the head, as a clause for the error line."""
    said = [line.split("GCS server:", 1)[1].strip() for line in stderr.splitlines()
            if "GCS server:" in line]
    if not said:
        return ""
    if "Unauthenticated" in said[-1]:
        # Ray >= 2.5x heads use token authentication by default.
        return ("; the head wants an authentication token: set RAY_AUTH_MODE=token and "
                "RAY_AUTH_TOKEN (or ~/.ray/auth_token) as on the cluster")
    return f"; last answer: {said[-1]}"


def connect(address: str | None = None, *, quiet: bool = True) -> bool:
    """Connect to a Ray cluster, or start Ray on this machine when ``address`` is None.

    Args:
        address: ``None``: reuse the Ray this process already runs, else start
            one locally (all CPUs of this machine). ``"auto"``: the cluster
            started on this machine with ``ray start``. ``"host:port"``: a
            cluster's head (GCS port, 6379 by default). ``"ray://host:10001"``:
            Ray Client.
        quiet: Keep Ray's own start-up lines and worker logs off stderr.

    Returns:
        Whether this call started or connected Ray (so the caller should
        ``ray.shutdown()`` when done), False when Ray was already running.

    Raises:
        DependencyError: Ray is not installed.
        ClusterError: The cluster cannot be reached or refused the connection.
    """
    ray = _import_ray()
    if ray.is_initialized():
        return False
    # Ray's usage statistics are on unless set; they also print a notice on
    # every start. A user's explicit setting is kept.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is not None:
        _check_reachable(address, CONNECT_TIMEOUT_S)
        _probe_cluster(address, PROBE_TIMEOUT_S)
    kwargs: dict[str, Any] = {"address": address, "ignore_reinit_error": True}
    if quiet:
        # Not RAY_BACKEND_LOG_LEVEL: setting it prints a line of its own. Ray's C++
        # core worker still prints one notice per actor pool ("constructor
        # arguments in the object store"), about Ray Data's own arguments.
        kwargs.update(logging_level=logging.ERROR, log_to_driver=False)
    if address is None:
        kwargs["include_dashboard"] = False  # faster start; nothing to show locally
    try:
        ray.init(**kwargs)
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError...: all mean "no cluster"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise ClusterError(f"cannot connect to {where} ({first})") from None
    return True


# -- records as Arrow ---------------------------------------------------------


def record_schema(labels: Sequence[str]) -> pa.Schema:
    """The Arrow schema of the dataset: one row per image, as :meth:`ImageResult.to_record`.

    Columns: ``path``, ``error`` (null unless the image failed), ``width``,
    ``height``, ``detected``, ``faces`` (list of ``box``, ``detection_score``,
    ``label``, ``score``, ``probabilities``), and the main face's ``label``,
    ``score`` and ``probabilities`` (a struct with one field per label, in
    the model's order). Failed images have only ``path`` and ``error`` set.
    """
    import pyarrow as pa

    probs = pa.struct([(label, pa.float64()) for label in labels])
    face = pa.struct([("box", pa.list_(pa.int64())), ("detection_score", pa.float64()),
                      ("label", pa.string()), ("score", pa.float64()), ("probabilities", probs)])
    return pa.schema([("path", pa.string()), ("error", pa.string()), ("width", pa.int64()),
                      ("height", pa.int64()), ("detected", pa.bool_()),
                      ("faces", pa.list_(face)), ("label", pa.string()),
                      ("score", pa.float64()), ("probabilities", probs)])


def results_to_table(results: Sequence[ImageResult], labels: Sequence[str]) -> pa.Table:
    """Results as an Arrow table of :func:`record_schema` (fields a record lacks are null)."""
    import pyarrow as pa

    return pa.Table.from_pylist([r.to_record() for r in results], schema=record_schema(labels))


def result_from_row(row: dict[str, Any]) -> ImageResult:
    """The :class:`ImageResult` a dataset row was made from (inverse of :func:`results_to_table`).

    Example:
        >>> result_from_row({"path": "a.jpg", "error": "a.jpg: empty file"}).to_record()
        {'path': 'a.jpg', 'error': 'a.jpg: empty file'}
    """
    if row.get("error") is not None:
        return ImageResult.failed(row["path"], row["error"])
    faces = [FaceResult(tuple(f["box"]), f["detection_score"],
                        Prediction(f["label"], f["score"], dict(f["probabilities"])))
             for f in row["faces"] or []]
    return ImageResult(row["path"], row["width"], row["height"], row["detected"], faces)


# -- reading files --------------------------------------------------------------


def _read_error(exc: OSError) -> str:
    """The reason for a file that cannot be read, in the local engine's words."""
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not an image"
    return f"cannot read ({exc.strerror or exc})"


_DATASOURCE: type | None = None


def _image_files_datasource() -> type:
    """The datasource class, defined on first use (it subclasses a Ray class)."""
    global _DATASOURCE
    if _DATASOURCE is not None:
        return _DATASOURCE
    import pyarrow as pa
    from ray.data.datasource import FileBasedDatasource

    class _Unreadable:
        """Stands in for a file that could not be opened; carries the reason."""

        def __init__(self, reason: str) -> None:
            self.reason = reason

        def __enter__(self) -> _Unreadable:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    class ImageFiles(FileBasedDatasource):
        """``read_binary_files`` with a ``read_error`` column instead of a failed job.

        Ray's binary reader fails the whole job when one file cannot be
        opened or read (deleted since listing, permission denied, I/O error);
        here that file becomes a row with its reason, so it ends up as one
        error record like in the local engine. Errors Ray retries (its
        ``DataContext.retried_io_errors``: throttling, transient network
        failures) are still raised, so Ray retries them.
        """

        _SCHEMA = pa.schema([(_BYTES, pa.binary()), (_READ_ERROR, pa.string())])

        def _transient(self, exc: OSError) -> bool:
            return any(text in str(exc) for text in self._data_context.retried_io_errors)

        def _open_input_source(self, filesystem: Any, path: str, **open_args: Any) -> Any:
            try:
                return super()._open_input_source(filesystem, path, **open_args)
            except OSError as exc:
                if self._transient(exc):
                    raise
                return _Unreadable(_read_error(exc))

        def _read_stream(self, f: Any, path: str) -> Iterator[pa.Table]:
            data, reason = b"", None
            if isinstance(f, _Unreadable):
                reason = f.reason
            else:
                try:
                    data = f.readall()
                except OSError as exc:
                    if self._transient(exc):
                        raise
                    reason = _read_error(exc)
            yield pa.Table.from_pydict({_BYTES: [data], _READ_ERROR: [reason]}, schema=self._SCHEMA)

        def _rows_per_file(self) -> int:
            return 1

    _DATASOURCE = ImageFiles
    return ImageFiles


@dataclass
class _Names:
    """Maps the paths Ray reports back to the names the local engine would print.

    Ray reads local files by absolute path and reports URIs without their
    scheme (``bucket/key`` for ``s3://bucket/key``); results name files as
    the user gave them, like the local engine does.
    """

    prefixes: list[tuple[str, str]] = field(default_factory=list)

    def add(self, resolved: str, shown: str) -> None:
        self.prefixes.append((resolved.rstrip("/") or "/", shown.rstrip("/") or shown))
        # Longest first, so a folder inside another given folder maps by its own name.
        self.prefixes.sort(key=lambda p: len(p[0]), reverse=True)

    def shown(self, path: str) -> str:
        for resolved, shown in self.prefixes:
            if path == resolved:
                return shown
            if path.startswith(resolved.rstrip("/") + "/"):
                return shown + path[len(resolved.rstrip("/")):]
        return path


class _ClassifyBatch:
    """The actor of the pool: one :class:`Classifier`, reused for every batch.

    The model's bytes travel with the actor (a cluster's nodes need not share a
    file system with the driver); each actor writes them to a private
    temporary file and opens its own ONNX Runtime session on it.
    """

    def __init__(self, model_name: str, model_ref: list[Any], labels: list[str],
                 providers: ProvidersArg, threads: int, batch_size: int, faces: str,
                 names: _Names) -> None:
        import ray

        self._dir = tempfile.TemporaryDirectory(prefix="fer-edge-model-")
        path = Path(self._dir.name) / model_name
        # The reference arrives wrapped in a list so that Ray passes it as is:
        # the model is fetched here, from the object store, once per actor.
        path.write_bytes(ray.get(model_ref[0]))
        self.classifier = Classifier(path, providers=providers, threads=threads,
                                     batch_size=batch_size)
        if self.classifier.labels != labels:  # the driver and the actor must agree
            raise ClusterError(f"model {model_name}: labels {self.classifier.labels} on the "
                               f"worker, {labels} on the driver")
        self.labels, self.faces, self.names = labels, faces, names

    def __call__(self, batch: pa.Table) -> pa.Table:
        paths = [self.names.shown(p) for p in batch.column(_PATH).to_pylist()]
        reasons = batch.column(_READ_ERROR).to_pylist()
        blobs = batch.column(_BYTES).to_pylist()
        readable = [i for i, reason in enumerate(reasons) if reason is None]
        # The local engine's own path: decode, checks, preprocessing, batching, errors.
        done = iter(self.classifier.analyze_batch(
            [EncodedImage(paths[i], blobs[i]) for i in readable], faces=self.faces,
            errors="record"))
        results = []
        for path, reason in zip(paths, reasons):
            if reason is None:
                results.append(next(done))
            else:
                name = display_path(path)
                results.append(ImageResult.failed(name, f"{name}: {reason}"))
        return results_to_table(results, self.labels)


# -- planning the job -----------------------------------------------------------


@dataclass
class Plan:
    """What :func:`plan_classification` built.

    Attributes:
        dataset: The records (see :func:`record_schema`), not yet computed.
        labels: The model's labels (the columns of ``probabilities``).
        files: Number of files Ray will read (None: not known in advance).
        failures: Local inputs that could not be listed (missing paths,
            unlistable folders): error records, also in ``dataset`` unless
            asked otherwise.
        skipped: Files in local folders skipped (not an image extension, hidden).
        workers: Actors in the pool.
        cpus_per_worker: Logical CPUs each actor reserves.
        gpus_per_worker: GPUs each actor reserves (0 without GPUs).
    """

    dataset: ray.data.Dataset
    labels: list[str]
    files: int | None
    failures: list[ImageResult]
    skipped: list[Path]
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float


def _wants_gpu(providers: ProvidersArg) -> bool:
    """Whether the chosen providers can use a GPU (``None``: the best available)."""
    if providers is None:
        return True
    names = [providers] if isinstance(providers, str) else list(providers)
    wanted = [canonical_name(n.strip()) for name in names for n in name.split(",") if n.strip()]
    return any(n != "CPUExecutionProvider" for n in wanted)


def size_pool(workers: int | None, cluster: dict[str, float],
              providers: ProvidersArg = None) -> tuple[int, float, float]:
    """Actors, CPUs per actor and GPUs per actor for a cluster's resources.

    Default pool: one actor per GPU, or else per CPU. CPUs per actor: 1, but
    never so many that the pool holds the :data:`READ_CPU_RESERVE` the read
    tasks need. GPUs: shared evenly when the cluster has them and the
    providers can use them.

    Example:
        >>> size_pool(None, {"CPU": 2.0})
        (2, 0.5, 0.0)
        >>> size_pool(16, {"CPU": 64.0, "GPU": 4.0})
        (16, 1.0, 0.25)
        >>> size_pool(None, {"CPU": 64.0, "GPU": 4.0}, providers="cpu")
        (64, 0.98, 0.0)
    """
    cpus, gpus = float(cluster.get("CPU", 1.0)), float(cluster.get("GPU", 0.0))
    use_gpu = gpus >= 1 and _wants_gpu(providers)
    if workers is None:
        workers = int(gpus) if use_gpu else max(1, int(cpus))
    free = max(cpus - READ_CPU_RESERVE, 0.1 * workers)
    cpus_per = round(min(1.0, free / workers), 2) or 0.01
    gpus_per = round(min(1.0, gpus / workers), 4) if use_gpu else 0.0
    return workers, cpus_per, gpus_per


def plan_classification(
    sources: Sequence[PathArg],
    *,
    model: str | os.PathLike | None = None,
    faces: str = "auto",
    providers: ProvidersArg = None,
    threads: int = 0,
    batch_size: int = 32,
    workers: int | None = None,
    preserve_order: bool = False,
    failures_in_dataset: bool = True,
) -> Plan:
    """Build the Ray job for :func:`classify_dataset`; Ray must be connected (:func:`connect`).

    Local sources are listed here with :func:`fer_edge.files.find_images` (the
    local engine's rules: extensions, hidden files, missing paths) and read by
    absolute path, so on a cluster they must be on a file system every node
    mounts. URIs (``s3://bucket/prefix``) are listed by Ray, keeping files with
    an image extension. ``failures_in_dataset=False`` leaves the scan's
    failures out of the dataset (the CLI writes them first itself).
    """
    ray = _import_ray()
    import pyarrow as pa
    import pyarrow.fs

    # On the driver: checks the model (and the providers here) before any
    # worker starts, and gives the labels for the schema and the writers.
    driver_clf = Classifier(model, providers=providers, threads=1, batch_size=batch_size)
    labels = driver_clf.labels
    names = _Names()
    local = [s for s in sources if not is_uri(s)]
    uris = [os.fspath(s) for s in sources if is_uri(s)]
    scan = find_images(local)
    failures = [ImageResult.failed(display_path(p), f"{display_path(p)}: {why}")
                for p, why in scan.failures]
    for arg in local:
        names.add(os.path.abspath(arg), os.fspath(Path(arg)))
    files: list[str] = []
    for path in scan.files:
        text = os.path.abspath(path)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # Arrow strings are UTF-8: a name that is not cannot travel to Ray.
            failures.append(ImageResult.failed(display_path(path), f"{display_path(path)}: "
                                               "file name is not valid UTF-8 (the Ray engine "
                                               "cannot pass it on; rename it)"))
            continue
        files.append(text)

    ImageFiles = _image_files_datasource()
    reads = []
    n_files: int | None = len(files)
    if files:
        # An explicit local file system: no path is taken for a URI by mistake.
        reads.append(ImageFiles(files, include_paths=True, filesystem=pyarrow.fs.LocalFileSystem()))
    if uris:
        for uri in uris:
            _, resolved = pyarrow.fs.FileSystem.from_uri(uri)
            names.add(resolved, uri.rstrip("/"))
        try:
            remote = ImageFiles(uris, include_paths=True,
                                file_extensions=sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
        except (OSError, ValueError) as exc:  # bad bucket, no credentials, nothing there
            raise ClusterError(f"cannot list {', '.join(uris)} ({exc})") from None
        reads.append(remote)
        try:
            # Ray listed the files already; how many it found is only kept
            # privately, so the total is unknown should that change.
            n_files = len(files) + len(remote._paths())
        except Exception:
            n_files = None

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = preserve_order
    n_workers, cpus_per, gpus_per = size_pool(workers, ray.cluster_resources(), providers)
    threads = threads or max(1, int(cpus_per))  # the pool is the parallelism, not ORT threads
    schema = record_schema(labels)
    # Put once; the driver's reference keeps it alive for restarted actors too.
    model_ref = [ray.put(driver_clf.model_path.read_bytes())]
    parts = []
    for datasource in reads:
        parts.append(ray.data.read_datasource(datasource).map_batches(
            _ClassifyBatch, batch_format="pyarrow", batch_size=batch_size,
            fn_constructor_kwargs=dict(
                model_name=driver_clf.model_path.name, model_ref=model_ref,
                labels=labels, providers=providers, threads=threads, batch_size=batch_size,
                faces=faces, names=names),
            concurrency=n_workers, num_cpus=cpus_per, num_gpus=gpus_per or None))
    if failures and failures_in_dataset:
        parts.append(ray.data.from_arrow(pa.Table.from_pylist(
            [f.to_record() for f in failures], schema=schema)))
    if not parts:
        parts.append(ray.data.from_arrow(schema.empty_table()))
    dataset = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    log.info("Ray engine: %s files, %d actors x %.2g CPU%s", "?" if n_files is None else n_files, n_workers, cpus_per,
             f" x {gpus_per:.2g} GPU" if gpus_per else "")
    return Plan(dataset, labels, n_files, failures, list(scan.skipped), n_workers, cpus_per,
                gpus_per)


def classify_dataset(
    sources: PathArg | Sequence[PathArg],
    *,
    model: str | os.PathLike | None = None,
    faces: str = "auto",
    providers: ProvidersArg = None,
    threads: int = 0,
    batch_size: int = 32,
    workers: int | None = None,
    preserve_order: bool = False,
    address: str | None = None,
) -> ray.data.Dataset:
    """Classify image files with Ray Data; returns the (lazy) Dataset of records.

    For use inside your own Ray program: chain more steps, or write it out
    (``ds.write_parquet("s3://bucket/out/")``: each worker writes its part).
    Rows follow :func:`record_schema`; :func:`result_from_row` turns one back
    into an :class:`~fer_edge.ImageResult`. Unreadable files are rows with
    ``error`` set, never a failed job.

    Args:
        sources: Local files and folders (walked as by ``fer-edge classify``;
            on a cluster, on a file system all nodes mount) and/or URIs of
            any file system Ray reads (``s3://bucket/prefix``).
        model: A shipped model's name or an ONNX file (default: ``default``);
            read once here and sent to every worker.
        faces: ``auto``, ``on`` (the built-in BlazeFace detector) or ``off``, as in
            :meth:`Classifier.analyze`.
        providers: ONNX Runtime providers for the workers (default: best available).
        threads: ONNX Runtime threads per worker (0: one per CPU it reserves).
        batch_size: Images per batch sent to a worker and per inference call.
        workers: Actors in the pool (default: one per GPU, else per CPU).
        preserve_order: Keep the input order (slower); by default records come
            as batches finish.
        address: Ray cluster to connect to when Ray is not running in this
            process yet (see :func:`connect`); ``None`` starts Ray locally.

    Raises:
        DependencyError: Ray is not installed (names the extra to install).
        ClusterError: The cluster cannot be reached.
        ModelError: The model cannot be used.
    """
    connect(address, quiet=False)
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    return plan_classification(sources, model=model, faces=faces, providers=providers,
                               threads=threads, batch_size=batch_size, workers=workers,
                               preserve_order=preserve_order).dataset


# -- the command line (fer-edge classify --engine ray) ----------------------------


def _quiet_ray_data(verbose: int) -> None:
    """Ray Data's own progress bars and INFO lines only with -v (the CLI has its own)."""
    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = verbose > 0 and sys.stderr.isatty()
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)


def run_cli(paths: Sequence[PathArg], opts: Any, model: Any, address: str | None,
            workers: int | None, verbose: int = 0) -> int:
    """``fer-edge classify --engine ray``: the local engine's run, with Ray doing the work.

    The same checks, records, stderr lines, progress and exit status as
    :func:`fer_edge.cli.run_classify`; records arrive in the order batches
    finish. ``--format parquet`` writes one Parquet file (``-o``) of
    :func:`record_schema` rows.

    Args:
        paths: Files, folders and URIs, as typed.
        opts: The :class:`fer_edge.cli.ClassifyOptions`.
        model: The :class:`fer_edge.cli.ModelOptions`.
        address: ``--ray-address`` (None: start Ray on this machine).
        workers: ``--workers`` (None: one per GPU, else per CPU).
        verbose: ``-v`` count.

    Returns:
        The exit status (0, or 1 when some input failed).
    """
    from . import cli  # the CLI's own helpers; imported here, as cli imports this lazily
    from .output import error_line, make_writer

    cli._check_usage([p for p in paths if not is_uri(p)], opts)
    ray = _import_ray()
    started = connect(address, quiet=verbose < 2)
    try:
        _quiet_ray_data(verbose)
        try:
            plan = plan_classification(
                paths, model=model.model, faces=opts.faces, providers=model.provider,
                threads=model.threads, batch_size=model.batch_size, workers=workers,
                failures_in_dataset=False)
        except FerEdgeError:
            raise
        except Exception as exc:  # Ray's errors while listing (no such bucket...)
            raise ClusterError(f"cannot plan the Ray job ({type(exc).__name__}: "
                               f"{(str(exc).strip().splitlines() or [''])[0]})") from None
        log.info("%s files to classify; %d skipped in folders (not an image extension, hidden, "
                 "or an --annotate copy)", "?" if plan.files is None else plan.files,
                 len(plan.skipped))
        total = plan.files or 0
        progress = cli._Progress(total, cli._progress_enabled(opts.progress, total,
                                                              model.batch_size), sys.stderr)
        tally = cli._Tally()
        shown_in_results = cli._failures_shown_in_results(opts)
        with cli._result_stream(opts.output, opts.force) as stream:
            sink = _ParquetSink(stream, plan.labels) if opts.fmt == "parquet" else None
            writer = None if sink else make_writer(opts.fmt, stream, plan.labels)
            if writer:
                writer.begin()
            # The scan's failures first, as the local engine reports them.
            if sink and plan.failures:
                sink.write(results_to_table(plan.failures, plan.labels))
            for failed in plan.failures:
                if writer:
                    writer.write(failed)
                tally.failed += 1
                if not shown_in_results:
                    cli._report_failure(progress, error_line(failed))
            for table in _execute(plan.dataset, ray):
                if sink:
                    sink.write(table)
                for row in table.to_pylist():
                    result = result_from_row(row)
                    progress.advance()
                    tally.images += 1
                    if writer:
                        writer.write(result)
                    tally.faces += len(result.faces)
                    if not result.ok:
                        tally.failed += 1
                        if not shown_in_results:
                            cli._report_failure(progress, error_line(result))
                stream.flush()
            if writer:
                writer.end()
            if sink:
                sink.close()
        progress.finish()
        log.info("%d images, %d faces, %d failed, %d skipped", tally.images, tally.faces,
                 tally.failed, len(plan.skipped))
        return cli.EXIT_FAILED if tally.failed else cli.EXIT_OK
    finally:
        if started:
            ray.shutdown()


def _execute(dataset: ray.data.Dataset, ray: Any) -> Iterator[pa.Table]:
    """Run the job, yielding record tables as they finish; Ray's failures as one-line errors."""
    try:
        yield from dataset.iter_batches(batch_format="pyarrow", batch_size=None)
    except FerEdgeError:
        raise
    except ray.exceptions.RayError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, FerEdgeError):  # e.g. the model failed to load on a worker
            raise type(cause)(str(cause)) from None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ClusterError(f"the Ray job failed ({first})") from None


class _ParquetSink:
    """Streams record tables into one Parquet file on the CLI's (atomic) output stream."""

    def __init__(self, stream: Any, labels: Sequence[str]) -> None:
        import pyarrow.parquet as pq

        # The atomic output is a text stream; Parquet goes to its binary buffer,
        # so the temporary-file-then-rename and --force rules stay the same.
        stream.flush()
        self._writer = pq.ParquetWriter(stream.buffer, record_schema(labels))

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table)

    def close(self) -> None:
        self._writer.close()
