"""Choosing ONNX Runtime execution providers: automatic, or exactly as asked.

Automatic choice takes the available providers in a fixed preference order
(:data:`PREFERENCE`). An explicit request is honoured exactly; asking for a
provider this ONNX Runtime build does not have raises :class:`ProviderError`
listing the ones it has, never a quiet switch to another one.

Example:
    >>> resolve_providers(None, available=["CPUExecutionProvider", "CUDAExecutionProvider"])
    ['CUDAExecutionProvider', 'CPUExecutionProvider']
    >>> resolve_providers("cpu", available=["CPUExecutionProvider"])
    ['CPUExecutionProvider']
"""

from __future__ import annotations

import functools
import logging
import os
import platform
from pathlib import Path
from typing import Sequence, Union

import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from .errors import ModelError, ProviderError
from .files import display_path

log = logging.getLogger("fer_edge")

#: Automatic choice, best first. Lower-ranked available providers follow the
#: best one in the session so nodes it cannot run still have a home.
PREFERENCE = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CoreMLExecutionProvider",
    "DmlExecutionProvider",
    "OpenVINOExecutionProvider",
    "CPUExecutionProvider",
)

#: Providers chosen automatically only on an Intel CPU. OpenVINO is Intel's
#: runtime: faster than ONNX Runtime's CPU provider there, with no such
#: promise on other vendors' CPUs, where it is used only when asked for.
INTEL_ONLY = frozenset({"OpenVINOExecutionProvider"})

#: Short names accepted by ``--provider`` and ``providers=`` (case-insensitive).
ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
    "dml": "DmlExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cpu": "CPUExecutionProvider",
}

ProvidersArg = Union[str, Sequence[str], None]

_GPU = "pip uninstall -y onnxruntime && pip install onnxruntime-gpu (README, section GPU)"

#: What to install to get a provider the standard ``onnxruntime`` wheel lacks.
INSTALL_HINTS = {
    "TensorrtExecutionProvider": f"TensorRT needs the GPU build plus TensorRT libraries: {_GPU}",
    "CUDAExecutionProvider": f"CUDA needs the GPU build of ONNX Runtime: {_GPU}",
    "DmlExecutionProvider": "DirectML needs Windows and: pip install onnxruntime-directml",
    "CoreMLExecutionProvider": "CoreML needs macOS, whose onnxruntime wheel includes it",
    "OpenVINOExecutionProvider": "OpenVINO (Intel CPU, GPU, NPU) needs: "
                                 "pip uninstall -y onnxruntime && pip install onnxruntime-openvino",
}


def ort_version() -> str:
    """Version of the installed ONNX Runtime."""
    return str(ort.__version__)


def available_providers() -> list[str]:
    """Execution providers this ONNX Runtime build offers, in its own order."""
    return list(ort.get_available_providers())


def is_intel_cpu() -> bool:
    """Whether this machine's CPU is Intel's (``/proc/cpuinfo``, else ``platform``)."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return "GenuineIntel" in line
    except OSError:
        pass  # not Linux: ask platform (Windows: "Intel64 Family 6 ...", "GenuineIntel")
    text = f"{platform.processor()} {platform.machine()}"
    return "Intel" in text or "GenuineIntel" in text


def canonical_name(name: str) -> str:
    """Full provider name for a short alias (``"cuda"``); other names unchanged.

    Example:
        >>> canonical_name("CUDA"), canonical_name("CPUExecutionProvider")
        ('CUDAExecutionProvider', 'CPUExecutionProvider')
    """
    return ALIASES.get(name.strip().lower(), name.strip())


def _choices(available: Sequence[str]) -> str:
    short = {full: alias for alias, full in ALIASES.items() if alias not in ("trt", "dml")}
    return ", ".join(f"{p} ({short[p]})" if p in short else p for p in available)


def resolve_providers(requested: ProvidersArg, available: Sequence[str] | None = None,
                      intel: bool | None = None) -> list[str]:
    """The provider list to give ``onnxruntime.InferenceSession``.

    Args:
        requested: ``None`` for the automatic choice; a provider name or alias,
            a comma-separated string of them, or a sequence of them.
        available: Providers to choose from; default
            ``onnxruntime.get_available_providers()``.
        intel: Whether the CPU is Intel's, which lets the automatic choice
            take :data:`INTEL_ONLY` providers; default :func:`is_intel_cpu`.

    Returns:
        Full provider names, the one to run on first.

    Raises:
        ProviderError: A requested provider is not available (the message lists
            the available ones), or none of :data:`PREFERENCE` is available.

    Example:
        >>> resolve_providers("cuda", available=["CPUExecutionProvider"])
        Traceback (most recent call last):
        ...
        fer_edge.errors.ProviderError: execution provider 'CUDAExecutionProvider' is not available; ...
    """
    available = available_providers() if available is None else list(available)
    if requested is None:
        if intel is None and any(p in INTEL_ONLY for p in available):
            intel = is_intel_cpu()
        chosen = [p for p in PREFERENCE if p in available and (intel or p not in INTEL_ONLY)]
        if not chosen:
            raise ProviderError(
                f"none of the supported execution providers {list(PREFERENCE)} is available; "
                f"available: {_choices(available)}"
            )
        return chosen
    names = requested.split(",") if isinstance(requested, str) else list(requested)
    resolved: list[str] = []
    for name in names:
        full = canonical_name(name)
        if not full:
            raise ProviderError(f"empty execution provider name in {requested!r}")
        if full not in available:
            raise ProviderError(
                f"execution provider {full!r} is not available; available: {_choices(available)}"
                + (f"; {INSTALL_HINTS[full]}" if full in INSTALL_HINTS else "")
            )
        if full not in resolved:
            resolved.append(full)
    if not resolved:
        raise ProviderError(f"no execution provider given; available: {_choices(available)}")
    return resolved


def tensorrt_cache_dir() -> Path:
    """Where TensorRT engines are cached: ``$FER_EDGE_CACHE/tensorrt``, else
    ``$XDG_CACHE_HOME/fer-edge/tensorrt``, else ``~/.cache/fer-edge/tensorrt``."""
    if os.environ.get("FER_EDGE_CACHE"):
        return Path(os.environ["FER_EDGE_CACHE"]) / "tensorrt"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fer-edge" / "tensorrt"


def provider_options(name: str) -> dict[str, str]:
    """The options fer-edge gives ONNX Runtime for provider ``name``.

    TensorRT builds an engine for the model when a session starts, which takes
    minutes; caching it on disk makes that a one-time cost per model.

    Example:
        >>> provider_options("CPUExecutionProvider")
        {}
    """
    if name != "TensorrtExecutionProvider":
        return {}
    cache = tensorrt_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("cannot create the TensorRT engine cache %s (%s); engines will be rebuilt "
                    "each run (set FER_EDGE_CACHE to a writable folder)", cache, exc)
        return {}
    return {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache)}


def _ort_errors(*names: str) -> tuple[type[BaseException], ...]:
    # The set of exception classes differs between ONNX Runtime releases.
    return tuple(getattr(_ort_state, n) for n in names if hasattr(_ort_state, n))


#: ONNX Runtime's errors for a file that is not a usable model (or a failed run).
ORT_MODEL_ERRORS = _ort_errors(
    "Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile", "NoModel",
    "NotImplemented", "RuntimeException", "ModelRequiresCompilation",
)
#: ONNX Runtime's errors for an execution provider that failed to start.
ORT_PROVIDER_ERRORS = _ort_errors("EPFail", "EngineError")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (ONNX Runtime's run to many lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


#: ONNX Runtime's session option for exact int8 arithmetic on x86 CPUs without VNNI.
X64_QUANT_PRECISION = "session.x64quantprecision"

#: /proc/cpuinfo flags of int8 dot-product instructions that add in int32 (no int16 step).
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")

#: ``platform.machine()`` of x86 CPUs, lower case (Linux, Windows, macOS spellings).
X86_MACHINES = ("x86_64", "amd64", "i386", "i686", "x86")


@functools.cache
def cpu_vnni_flags() -> tuple[str, ...] | None:
    """The VNNI-type flags this CPU reports; ``None`` where /proc/cpuinfo cannot be read.

    Example:
        >>> flags = cpu_vnni_flags()
        >>> flags is None or set(flags) <= set(VNNI_FLAGS)
        True
    """
    try:
        flags = set(Path("/proc/cpuinfo").read_text(encoding="utf-8").split())
    except OSError:
        return None
    return tuple(f for f in VNNI_FLAGS if f in flags)


def exact_int8_matters(machine: str, vnni: tuple[str, ...] | None) -> bool:
    """Whether ORT's exact int8 kernels can change answers on a CPU: x86 without VNNI.

    An x86 CPU whose flags cannot be read (no /proc/cpuinfo: Windows, macOS)
    counts as one without VNNI: exact answers first.

    Args:
        machine: ``platform.machine()``.
        vnni: The CPU's VNNI flags (:func:`cpu_vnni_flags`); ``None``: unknown.

    Example:
        >>> exact_int8_matters("x86_64", ()), exact_int8_matters("x86_64", ("avx512_vnni",))
        (True, False)
        >>> exact_int8_matters("AMD64", None), exact_int8_matters("arm64", None)
        (True, False)
    """
    return machine.lower() in X86_MACHINES and not vnni


def session_options(threads: int, exact_int8: bool | None = None) -> ort.SessionOptions:
    """The ONNX Runtime session options of every fer-edge session.

    One place, so that the runtime, export's val figures, the benchmarks and
    the parity checks all run a model the same way.

    Args:
        threads: Intra-op threads; 0 lets ONNX Runtime decide.
        exact_int8: Exact int8 kernels (see below). ``None``: where they
            matter, on x86 CPUs without VNNI (:func:`exact_int8_matters`);
            ``True``/``False``: always/never (``python -m
            benchmarks.int8_kernels`` compares the two).

    Example:
        >>> session_options(2, exact_int8=True).get_session_config_entry(X64_QUANT_PRECISION)
        '1'
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    # Errors only: ORT's warnings (e.g. nodes placed on CPU) are noise for users;
    # the provider actually used is checked and reported by the caller.
    opts.log_severity_level = 3
    # An int8 model must give the same answers on every CPU. On x86 CPUs without
    # VNNI (AVX2, plain AVX-512) ORT's u8s8 kernels sum pairs of products in
    # int16 and saturate: the 8-bit fast.onnx shipped until 2026-12-01 scored
    # 81.48% on val on an AMD EPYC (AVX2) against 81.95% on VNNI Xeons. This option
    # makes ORT use exact u8u8 kernels there instead (81.95% on that EPYC, the same
    # as the browser page's WebAssembly), for layers whose weights use more than
    # 7 bits, so today's fast.onnx (7-bit weights) keeps the fast kernels; float
    # models have no int8 kernels to change. Cost for the 8-bit file: 1.5x the
    # time per image at batch 32 on that EPYC. The option is set only where it
    # matters: on a VNNI Xeon (AMX too) it gives the same logits as ORT's default
    # kernels but made the 8-bit file 2.8x slower at batch 32 (1.456 against
    # 0.522 ms; python -m benchmarks.int8_kernels; README, "int8 on x86 CPUs without VNNI").
    if exact_int8 is None:
        exact_int8 = exact_int8_matters(platform.machine(), cpu_vnni_flags())
    if exact_int8:
        opts.add_session_config_entry(X64_QUANT_PRECISION, "1")
    return opts


def open_session(path: Path, providers: list[str], threads: int,
                 what: str = "") -> ort.InferenceSession:
    """An ONNX Runtime session on ``providers``, with fer-edge's provider options.

    Shared by the expression model and the face detector, so both run on the
    same providers with the same settings (TensorRT engine cache included).

    Args:
        path: The ONNX file.
        providers: Full provider names, e.g. from :func:`resolve_providers`.
        threads: Intra-op threads; 0 lets ONNX Runtime decide.
        what: Prefix for error messages naming the file's role, e.g.
            ``"face detector "``; empty for the expression model.

    Raises:
        ModelError: The file is not a loadable ONNX model or cannot be read.
        ProviderError: The first provider failed to start.
    """
    opts = session_options(threads)
    name = f"{what}{display_path(path)}"
    with_options = [(p, provider_options(p)) for p in providers]
    try:
        return ort.InferenceSession(os.fspath(path), sess_options=opts, providers=with_options)
    except ORT_PROVIDER_ERRORS as exc:
        raise ProviderError(f"{name}: execution provider {providers[0]} failed to start: "
                            f"{first_line(exc)}") from None
    except ORT_MODEL_ERRORS as exc:
        raise ModelError(f"{name}: not a loadable ONNX model ({first_line(exc)})") from None
    except PermissionError:
        raise ModelError(f"{name}: permission denied") from None
