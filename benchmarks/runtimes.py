"""The things being benchmarked: PyTorch eager and ONNX Runtime sessions, one interface."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from export.evaluate import make_session
from fer_edge.metadata import ModelInfo


@dataclass
class Runtime:
    """One way of running the model.

    Attributes:
        name: Row label, e.g. ``"PyTorch"``, ``"ONNX fp32"``.
        kind: ``"torch"`` or ``"onnx"``.
        precision: ``fp32``, ``fp16`` or ``int8``.
        tta: ``none`` or ``flip``.
        path: Checkpoint or ONNX file.
        size_bytes: Weights on disk (ONNX file; serialized state_dict for PyTorch).
        threads: Threads the runtime reports using.
        predict: float32 (N, 3, S, S) -> float32 logits (N, C).
        info: ONNX metadata (``None`` for PyTorch).
        sha256: PyTorch: the checkpoint's digest (an ensemble's: of its members' digests),
            as export stores it, so ONNX files can be matched to it.
        members: PyTorch ensemble: the further checkpoints after ``path``.
    """

    name: str
    kind: str
    precision: str
    tta: str
    path: Path
    size_bytes: int
    threads: int
    predict: Callable[[np.ndarray], np.ndarray]
    info: ModelInfo | None = None
    sha256: str | None = None
    members: list[Path] = field(default_factory=list)

    @property
    def model_info(self) -> ModelInfo:
        """``info``, which every ONNX runtime has.

        Raises:
            ValueError: this runtime has no ONNX metadata (a PyTorch runtime).
        """
        if self.info is None:
            raise ValueError(f"{self.name} ({self.kind}) has no ONNX metadata")
        return self.info


def onnx_runtime(path: Path, threads: int) -> Runtime:
    """An ONNX Runtime CPU session on an exported file (``threads`` intra-op threads).

    Raises:
        ModelError: ``path`` is missing or not a loadable ONNX model (from ``make_session``).
    """
    return session_runtime(make_session(Path(path), threads), Path(path))


def session_runtime(session: Any, path: Path) -> Runtime:
    """A :class:`Runtime` on an ONNX Runtime session already opened on ``path``."""
    info = ModelInfo.from_props(session.get_modelmeta().custom_metadata_map, source=str(path))
    name = session.get_inputs()[0].name

    def predict(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: x})[0]

    label = f"ONNX {info.precision}" + (" +flip" if info.tta == "flip" else "")
    intra = int(session.get_session_options().intra_op_num_threads)
    return Runtime(label, "onnx", info.precision, info.tta, Path(path), Path(path).stat().st_size,
                   intra, predict, info)


def torch_runtime(checkpoint: Path, tta: str, threads: int, ensemble: list[Path] | None = None) -> Runtime:
    """PyTorch eager (fp32, NCHW, ``inference_mode``) on the checkpoint's model.

    With ``ensemble``, the model is the mean of all members' logits, as export builds it.
    """
    import torch

    from export.checkpoints import FlipTTA, load_for_export

    torch.set_num_threads(threads)
    loaded = load_for_export(Path(checkpoint), tuple(ensemble or ()))
    model = FlipTTA(loaded.model).eval() if tta == "flip" else loaded.model
    buf = io.BytesIO()
    torch.save(loaded.model.state_dict(), buf)

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    label = "PyTorch" + (f" x{len(loaded.members)}" if loaded.members else "") + (" +flip" if tta == "flip" else "")
    return Runtime(label, "torch", "fp32", tta, Path(checkpoint), buf.getbuffer().nbytes,
                   torch.get_num_threads(), predict, sha256=loaded.sha256, members=list(ensemble or []))


def predict_all(runtime: Runtime, inputs: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Logits for every input, in batches."""
    return np.concatenate([runtime.predict(np.ascontiguousarray(inputs[i : i + batch_size]))
                           for i in range(0, len(inputs), batch_size)]).astype(np.float32)
