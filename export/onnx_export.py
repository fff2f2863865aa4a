"""Checkpoint -> verified, simplified ONNX file carrying fer-edge metadata.

Pipeline of :func:`export_checkpoint`:

1. load the checkpoint (``weights_only=True``) and rebuild the model from its
   own config; strip any trailing softmax (the graph outputs logits);
2. with further checkpoints (``ensemble``), average the members' logits in one
   graph; optionally wrap it in flip test-time augmentation;
3. export with a dynamic batch axis (TorchScript exporter, input ``input``,
   output ``logits``), run ``onnx.checker`` and onnxsim;
4. check parity: ONNX Runtime vs PyTorch, simplified vs unsimplified graph,
   batch 1 vs batched; on val images when ``data`` is given, else on random ones;
5. optionally make the fp16 or int8 variant and score it against fp32 on val;
   with val images, fit the written graph's softmax temperature on its val
   logits (:mod:`export.calibrate`) and record ECE before and after;
6. write :class:`fer_edge.metadata.ModelInfo` into the graph, re-check the
   serialized bytes load in ONNX Runtime with readable metadata, and only then
   write the file atomically.

Any failed check raises :class:`ExportError` and writes nothing.
"""

from __future__ import annotations

import datetime as _dt
import logging
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

import fer_edge
from fer_edge.atomic import atomic_write, create_new, replace
from fer_edge.errors import ModelError
from fer_edge.metadata import ModelInfo
from fer_edge.preprocess import PreprocessSpec

from .calibrate import Calibration, calibrate, calibration_facts
from .checkpoints import MODEL_NAMES, FlipTTA, LoadedCheckpoint, load_for_export, torch_logits
from .evaluate import (
    EvalResult,
    LabelledImages,
    Parity,
    calibration_inputs,
    compare,
    cpu_model,
    default_threads,
    load_labelled,
    make_session,
    median_ms_per_image,
    random_inputs,
    run_session,
    score,
    stratified_sample,
)
from .variants import QuantConfig, to_fp16, to_int8, with_fp16_weights

log = logging.getLogger("export")

PRECISIONS = ("fp32", "fp16", "int8")
#: How an fp32 graph stores its weights (``fp16``: half the file, fp32 compute).
WEIGHT_STORAGE = ("fp32", "fp16")
TTA_MODES = ("none", "flip")
MIN_OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
#: A reduced-precision variant losing more than this (accuracy, absolute) is flagged.
MAX_ACCURACY_DROP = 0.01


def graph_name(precision: str, stored: str | None) -> str:
    """How export names a graph in reports and metadata keys: its precision, and the
    type its weights are stored in when that is not the precision's own.

    Example:
        >>> graph_name("fp32", "fp16"), graph_name("int8", None)
        ('fp32 (fp16 weights)', 'int8')
    """
    return f"{precision} ({stored} weights)" if stored else precision


class ExportError(RuntimeError):
    """An export check failed or the output cannot be written; nothing was written."""


class OutputExistsError(ExportError, FileExistsError):
    """``out`` exists and overwriting was not asked for."""


@dataclass
class ExportConfig:
    """What to export and how.

    Attributes:
        checkpoint: fer-edge training checkpoint (``best.pt``).
        out: ONNX file to write.
        data: Image-folder root with ``train/<class>/`` and ``val/<class>/``;
            enables val-image parity, val accuracy and int8 calibration.
        precision: ``fp32``, ``fp16`` or ``int8``.
        weights: How an ``fp32`` graph stores its weights: ``fp32``, or
            ``fp16`` (half the file; widened at load, so compute stays fp32).
        opset: ONNX opset (17 or newer).
        tta: ``none`` or ``flip`` (graph averages image and mirror logits).
        ensemble: Further checkpoints with the same classes and preprocessing;
            the graph outputs the mean of all members' logits (``checkpoint``'s included).
        calib_images: Training images used to calibrate int8.
        force: Overwrite an existing ``out``.
        model_version: Stored version string; default ``<run folder>-e<epoch>``.
        parity_images: Inputs used for the parity checks.
        atol: Largest allowed absolute logit difference for fp32 parity.
        val_limit_per_class: Cap on val images per class (quick runs); 0 = all.
        threads: CPU threads for PyTorch and ONNX Runtime; 0 = all cores.
        seed: Seed for sampling parity/calibration images and random inputs.
        quant: int8 recipe.
    """

    checkpoint: Path
    out: Path
    data: Path | None = None
    precision: str = "fp32"
    weights: str = "fp32"
    opset: int = MIN_OPSET
    tta: str = "none"
    ensemble: tuple[Path, ...] = ()
    calib_images: int = 300
    force: bool = False
    model_version: str | None = None
    parity_images: int = 64
    atol: float = 1e-4
    val_limit_per_class: int = 0
    threads: int = 0
    seed: int = 0
    quant: QuantConfig = field(default_factory=QuantConfig)

    def validate(self) -> None:
        """Raise ``ValueError`` (naming valid choices) for bad settings."""
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {PRECISIONS}")
        if self.weights not in WEIGHT_STORAGE:
            raise ValueError(f"weights {self.weights!r} is not one of {WEIGHT_STORAGE}")
        if self.weights == "fp16" and self.precision != "fp32":
            raise ValueError(f"fp16 weights are for the fp32 precision; precision {self.precision} "
                             "already stores its own weight type")
        if self.tta not in TTA_MODES:
            raise ValueError(f"tta {self.tta!r} is not one of {TTA_MODES}")
        if self.opset < MIN_OPSET:
            raise ValueError(f"opset {self.opset} is too old; use {MIN_OPSET} or newer")
        if self.parity_images < 1 or self.calib_images < 1:
            raise ValueError("parity_images and calib_images must be >= 1")
        paths = [Path(self.checkpoint).resolve(), *(Path(p).resolve() for p in self.ensemble)]
        if len(set(paths)) != len(paths):
            raise ValueError(f"a checkpoint is given twice: {[str(p) for p in paths]}")
        if self.precision == "int8" and self.data is None:
            raise ValueError("int8 needs calibration images: pass data (--data DIR with train/<class>/)")
        self.quant.validate()

    @property
    def written(self) -> str:
        """The written graph's name (:func:`graph_name`): ``fp32`` unless it is a variant.

        Example:
            >>> ExportConfig(Path("a.pt"), Path("a.onnx"), weights="fp16").written
            'fp32 (fp16 weights)'
        """
        return graph_name(self.precision, None if self.weights == "fp32" else self.weights)

    @property
    def variant(self) -> str | None:
        """The written graph's name when it is derived from the fp32 graph, else None."""
        return None if self.written == "fp32" else self.written


@dataclass
class ExportReport:
    """What :func:`export_checkpoint` did and measured.

    Attributes:
        out: The written file.
        info: Metadata stored in it.
        nodes_exported: Graph nodes straight from the exporter.
        nodes_simplified: Graph nodes after onnxsim.
        nodes_written: Graph nodes of the written (possibly fp16/int8) graph.
        size_bytes: Size of the written file.
        fp32_size_bytes: Size of the fp32 graph (for comparison with variants).
        parity: Every parity check, fp32 ones enforced, variant ones reported.
        val: Val metrics per precision (``fp32`` and the variant), when data was given.
        calibration: The written graph's fitted temperature and ECE figures, when data was given.
        speed_b32: For a variant, median ms/image at batch 32 of ``fp32`` and of the
            variant, timed once during export (a hint; ``python -m benchmarks`` measures).
        warnings: Things the user must see (accuracy loss, no speed-up, missing measurements).
    """

    out: Path
    info: ModelInfo
    nodes_exported: int
    nodes_simplified: int
    nodes_written: int
    size_bytes: int
    fp32_size_bytes: int
    parity: list[Parity]
    val: dict[str, EvalResult]
    speed_b32: dict[str, float]
    warnings: list[str]
    calibration: Calibration | None = None

    def summary(self) -> str:
        """Human-readable multi-line summary."""
        info = self.info
        written = graph_name(info.precision, info.extra.get("weights_storage"))
        lines = [
            f"wrote {self.out} ({self.size_bytes / 1e6:.2f} MB; fp32 graph {self.fp32_size_bytes / 1e6:.2f} MB)",
            f"  model {info.model_name} {info.model_version}, precision {written}, "
            f"tta {info.tta}, opset {info.extra.get('opset')}, labels {info.labels}, "
            f"input {info.preprocess.input_size}px",
            f"  nodes: {self.nodes_exported} exported -> {self.nodes_simplified} simplified"
            + (f" -> {self.nodes_written} {written}" if written != "fp32" else ""),
        ]
        lines += [f"  parity {'info' if p.atol is None else 'OK  ' if p.passed else 'FAIL'} {p.describe()}"
                  for p in self.parity]
        if self.val:
            base = self.val.get("fp32")
            for precision, r in self.val.items():
                delta = ""
                if base is not None and precision != "fp32":
                    delta = f" ({(r.accuracy - base.accuracy) * 100:+.2f} points vs fp32)"
                lines.append(f"  val {precision:5s} accuracy {r.accuracy:.4f} macro-F1 {r.macro_f1:.4f} "
                             f"on {r.n} images{delta}")
        else:
            src = info.extra.get("val_source", "")
            lines.append(f"  val accuracy {info.val_accuracy} macro-F1 {info.val_macro_f1} ({src})")
        if self.calibration is not None:
            lines.append(f"  calibration {self.calibration.describe()}")
        if self.speed_b32:
            lines.append("  batch-32 ms/image (rough, timed during export): "
                         + ", ".join(f"{k} {v:.3f}" for k, v in self.speed_b32.items()))
        lines += [f"WARNING: {w}" for w in self.warnings]
        return "\n".join(lines)


def export_graph(model: nn.Module, input_size: int, opset: int, path: Path) -> onnx.ModelProto:
    """TorchScript-exporter ONNX graph with a dynamic batch axis, checked by ``onnx.checker``.

    The TorchScript exporter is used on purpose: the torch.export-based one
    needs onnxscript, is ~10x slower here and, asked for opset 17, fails its
    version conversion and silently emits opset 18.
    """
    dummy = torch.zeros(2, 3, input_size, input_size)
    with warnings.catch_warnings():
        # The exporter's deprecation notice is about its future, not this graph.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (dummy,), str(path), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    return graph


def simplify(graph: onnx.ModelProto) -> onnx.ModelProto:
    """onnxsim the graph (constant folding, dead-node removal), then ``onnx.checker`` it."""
    import onnxsim

    simplified, ok = onnxsim.simplify(graph)
    if not ok:
        raise ExportError("onnxsim could not validate the simplified graph")
    onnx.checker.check_model(simplified, full_check=True)
    return simplified


def check_graph_contract(graph: onnx.ModelProto, num_classes: int, what: str) -> None:
    """Logits out (no Softmax), input ``input`` with a dynamic batch axis, output ``logits``.

    Raises:
        ExportError: naming the violated rule.
    """
    ops = {n.op_type for n in graph.graph.node}
    if ops & {"Softmax", "LogSoftmax"}:
        raise ExportError(f"{what}: graph contains a Softmax node; it must output logits")
    if [i.name for i in graph.graph.input] != [INPUT_NAME] or [o.name for o in graph.graph.output] != [OUTPUT_NAME]:
        raise ExportError(f"{what}: expected input '{INPUT_NAME}' and output '{OUTPUT_NAME}', got "
                          f"{[i.name for i in graph.graph.input]} -> {[o.name for o in graph.graph.output]}")
    in_dims = graph.graph.input[0].type.tensor_type.shape.dim
    out_dims = graph.graph.output[0].type.tensor_type.shape.dim
    if in_dims[0].HasField("dim_value") or out_dims[0].HasField("dim_value"):
        raise ExportError(f"{what}: the batch axis is fixed; it must be dynamic")
    if out_dims[1].HasField("dim_value") and out_dims[1].dim_value != num_classes:
        raise ExportError(f"{what}: {out_dims[1].dim_value} logits, expected {num_classes}")


def _parity_inputs(cfg: ExportConfig, spec: PreprocessSpec, val: LabelledImages | None) -> tuple[np.ndarray, str]:
    if val is not None:
        idx = stratified_sample(val.labels, cfg.parity_images, cfg.seed)
        return val.inputs[idx], "val images"
    return random_inputs(spec, cfg.parity_images, cfg.seed), "random inputs"


def check_fp32_parity(model: nn.Module, raw: bytes, sim_session: Any, inputs: np.ndarray,
                      source: str, cfg: ExportConfig) -> tuple[list[Parity], np.ndarray]:
    """Enforced checks: ORT vs PyTorch, simplified vs unsimplified, batch 1 vs batched.

    ``sim_session`` runs the simplified graph; the export reuses it for every
    later fp32 figure rather than building the session again.

    Returns:
        The checks, and the simplified graph's logits on ``inputs`` (the
        reference the reduced-precision variant is compared with).

    Raises:
        ExportError: any check out of tolerance (the message lists them).
    """
    ref = torch_logits(model, inputs)
    raw_out = run_session(make_session(raw, cfg.threads), inputs)
    sim_out = run_session(sim_session, inputs)
    single = np.concatenate([run_session(sim_session, inputs[i : i + 1]) for i in range(min(8, len(inputs)))])
    checks = [
        compare("onnx fp32 vs pytorch", source, ref, sim_out, cfg.atol),
        compare("simplified vs unsimplified onnx", source, raw_out, sim_out, cfg.atol),
        compare("onnx batch 1 vs batched", source, sim_out[: len(single)], single, cfg.atol),
    ]
    failed = [c for c in checks if not c.passed]
    if failed:
        raise ExportError("parity check failed, nothing written: " + "; ".join(c.describe() for c in failed))
    return checks, sim_out


def make_variant(simplified: onnx.ModelProto, cfg: ExportConfig, spec: PreprocessSpec,
                 classes: list[str]) -> onnx.ModelProto:
    """The fp16, int8 or fp16-stored graph derived from the simplified fp32 graph."""
    if cfg.weights == "fp16":
        return with_fp16_weights(simplified)
    if cfg.precision == "fp16":
        return to_fp16(simplified)
    assert cfg.data is not None  # validate() guarantees it for int8
    calib = calibration_inputs(cfg.data, classes, spec, cfg.calib_images, cfg.seed)
    log.info("int8: calibrating %s on %d training images", cfg.quant.label(), len(calib))
    return to_int8(simplified, calib, cfg.quant, INPUT_NAME)


def build_info(cfg: ExportConfig, loaded: LoadedCheckpoint, val: dict[str, EvalResult],
               extra: dict, temperature: float = 1.0) -> ModelInfo:
    """The metadata stored in the file; val figures come from the ONNX graph when measured."""
    ckpt_val = loaded.val or {}
    written = cfg.written
    measured = val.get(written)
    acc: float | None
    f1: float | None
    if measured is not None:
        acc, f1, source = measured.accuracy, measured.macro_f1, f"onnx {written} graph on {measured.n} val images"
    elif cfg.variant is None and ckpt_val and bool(ckpt_val.get("tta")) == (cfg.tta == "flip"):
        # The checkpoint's figure describes this graph only when the TTA setting matches.
        acc, f1 = ckpt_val.get("accuracy"), ckpt_val.get("macro_f1")
        source = f"checkpoint (pytorch, tta={ckpt_val.get('tta')}, {ckpt_val.get('n')} val images)"
    else:
        acc, f1, source = None, None, "not measured: export with --data DIR"
    version = cfg.model_version or "+".join(_default_version(m) for m in loaded.members or [loaded])
    classes = ", ".join(loaded.classes)
    arch = MODEL_NAMES[loaded.config.arch]
    if loaded.config.drop_blocks:
        stages = ", ".join(map(str, loaded.config.drop_blocks))
        arch += f" without the last block of stages {stages}"
    name = f"{len(loaded.members)} x {arch} (mean logits)" if loaded.members else arch
    return ModelInfo(
        labels=list(loaded.classes),
        preprocess=loaded.spec,
        model_name=name,
        model_version=version,
        precision=cfg.precision,
        input_name=INPUT_NAME,
        output=OUTPUT_NAME,
        tta=cfg.tta,
        temperature=temperature,
        training_data=training_data(loaded.config.data, classes),
        val_accuracy=float(acc) if acc is not None else None,
        val_macro_f1=float(f1) if f1 is not None else None,
        export_date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        exporter_version=fer_edge.__version__,
        extra={**extra, "val_source": source},
    )


def training_data(data: str, classes: str) -> str:
    """What the metadata says of the training data: the data set's folder name and split.

    Never the local path, which means nothing on another machine.

    Example:
        >>> training_data("../shared/data/fer2013", "happy, sad")
        'fer2013, train split (classes happy, sad)'
    """
    return f"{Path(data).name or data}, train split (classes {classes})"


def measure_speed(session: Any, inputs: np.ndarray, threads: int) -> dict:
    """Median ms/image of the written graph's session at batch 1 and 32 on the CPU, for the metadata.

    ``fer-edge models`` shows these; ``python -m benchmarks`` measures properly
    (more repeats, every model in one run).
    """
    return {
        "ms_per_image_b1": round(median_ms_per_image(session, inputs, batch=1, calls=50, warmup=10), 4),
        "ms_per_image_b32": round(median_ms_per_image(session, inputs, batch=32, calls=20, warmup=3), 4),
        "threads": threads or default_threads(),
        "provider": "CPUExecutionProvider",
        "machine": cpu_model(),
    }


def with_metadata(graph: onnx.ModelProto, info: ModelInfo) -> bytes:
    """Serialized graph with ``info`` in ``metadata_props``, verified to load and read back.

    Raises:
        ExportError: ONNX Runtime cannot load it or the metadata does not round-trip.
    """
    onnx.helper.set_model_props(graph, info.to_props())
    graph.producer_name, graph.producer_version = "fer-edge export", fer_edge.__version__
    data = graph.SerializeToString()
    session = make_session(data, threads=1)
    back = ModelInfo.from_props(session.get_modelmeta().custom_metadata_map, source="exported graph")
    if back != info:
        raise ExportError("metadata did not round-trip through ONNX Runtime")
    return data


def write_atomic(data: bytes, out: Path, force: bool) -> None:
    """Write via :func:`fer_edge.atomic.atomic_write`; never clobber without ``force``.

    Raises:
        OutputExistsError: ``out`` exists (or appeared meanwhile) and ``force`` is false.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_write(out, "wb", place=replace if force else create_new) as f:
            f.write(data)
    except FileExistsError:
        raise OutputExistsError(f"{out} exists; pass --force to overwrite it") from None


def restamp(model: onnx.ModelProto, info: ModelInfo, path: Path) -> None:
    """Replace the fer-edge metadata of ``model`` (loaded from ``path``) with ``info``, in place.

    For tools that change facts, not the network (``export.speed``,
    ``export.calibrate``): the graph's bytes are checked to be unchanged before
    the file is replaced atomically.

    Raises:
        ModelError: Re-serialising changed the graph (the file is left as it was).
    """
    graph = model.graph.SerializeToString()
    del model.metadata_props[:]
    data = with_metadata(model, info)
    if onnx.load_from_string(data).graph.SerializeToString() != graph:
        raise ModelError(f"{path}: re-serialising changed the graph; file left as it was")
    write_atomic(data, path, force=True)


def _default_version(loaded: LoadedCheckpoint) -> str:
    """``<run folder>-e<epoch>``, or the run folder when the epoch is unknown."""
    run = loaded.path.resolve().parent.name
    return f"{run}-e{loaded.epoch}" if loaded.epoch is not None else run


def _member_facts(member: LoadedCheckpoint) -> dict:
    """What the metadata records of one ensemble member."""
    return {"checkpoint": member.path.name, "run": member.path.resolve().parent.name,
            "sha256": member.sha256, "epoch": member.epoch, "val": _val_facts(member.val)}


def _val_facts(val: dict | None) -> dict | None:
    """The checkpoint's own val figures that the metadata records."""
    return {k: val.get(k) for k in ("accuracy", "macro_f1", "tta", "n")} if val else None


def _check_weight_grid(cfg: ExportConfig, qat_bits: int, report_warnings: list[str]) -> None:
    """Warn when a checkpoint trained for one int8 weight grid (train.qat) is exported to another."""
    if not qat_bits:
        return
    bits = None
    if cfg.precision == "int8":
        bits = 7 if cfg.quant.reduce_range else 8
    if bits != qat_bits:
        exported = f"{bits}-bit int8 weights" if bits else cfg.precision
        fix = "--precision int8" + (" --int8-reduce-range" if qat_bits == 7 else " without --int8-reduce-range")
        report_warnings.append(f"the checkpoint was trained for {qat_bits}-bit int8 weights (--qat-weight-bits "
                               f"{qat_bits}) but is exported as {exported}: export with {fix}")


def _variant_val(cfg: ExportConfig, fp32: Any, variant: Any | None, val: LabelledImages | None,
                 report_warnings: list[str]) -> tuple[dict[str, EvalResult], np.ndarray | None]:
    """Val metrics of fp32 and the variant (their sessions), and the written graph's val logits.

    Warns when the variant loses > 1 point.
    """
    name = cfg.written
    if val is None:
        if variant is not None:
            report_warnings.append(f"{name} accuracy loss NOT measured (no --data); "
                                   "measure it before shipping this file")
        return {}, None
    logits = {"fp32": run_session(fp32, val.inputs)}
    if variant is not None:
        logits[name] = run_session(variant, val.inputs)
    results = {k: score(v, val.labels, val.classes) for k, v in logits.items()}
    if variant is not None:
        drop = results["fp32"].accuracy - results[name].accuracy
        if drop > MAX_ACCURACY_DROP:
            report_warnings.append(
                f"{name} loses {drop * 100:.2f} points of val accuracy vs fp32 "
                f"({results[name].accuracy:.4f} vs {results['fp32'].accuracy:.4f}), "
                f"more than the {MAX_ACCURACY_DROP * 100:.0f}-point budget"
            )
    return results, logits[name]


def _calibration(cfg: ExportConfig, logits: np.ndarray | None, val: LabelledImages | None,
                 report_warnings: list[str]) -> Calibration | None:
    """The written graph's temperature, fitted on its own val logits (:mod:`export.calibrate`)."""
    if logits is None or val is None:
        report_warnings.append("probabilities NOT calibrated (no --data): temperature 1; "
                               "run python -m export.calibrate MODEL --data DIR --write before shipping")
        return None
    cal = calibrate(logits, val.labels)
    log.info("calibration: %s", cal.describe())
    return cal


def _variant_speed(cfg: ExportConfig, fp32: Any, variant: Any | None, inputs: np.ndarray,
                   report_warnings: list[str]) -> dict[str, float]:
    """Batch-32 ms/image of fp32 and the variant (their sessions); warns when a reduced precision is not faster.

    fp16 storage computes in fp32, so it is timed but expected to match fp32, not to beat it.
    """
    if variant is None:
        return {}
    name = cfg.written
    speed = {"fp32": median_ms_per_image(fp32, inputs), name: median_ms_per_image(variant, inputs)}
    if cfg.precision != "fp32" and speed[name] >= speed["fp32"]:
        report_warnings.append(
            f"{name} is NOT faster than fp32 at batch 32 here ({speed[name]:.3f} vs "
            f"{speed['fp32']:.3f} ms/image): it only saves file size; confirm with python -m benchmarks"
        )
    return speed


def export_checkpoint(cfg: ExportConfig) -> ExportReport:
    """Export, verify and write one checkpoint (see the module docstring).

    Raises:
        ValueError: bad settings (message lists valid choices).
        CheckpointError: the checkpoint is unreadable or does not fit its config.
        train.data.DataLayoutError: ``data`` is not ``<root>/<split>/<class>/``.
        ExportError: a check failed or ``out`` exists without ``force``.
    """
    cfg.validate()
    out = Path(cfg.out)
    if out.exists() and not cfg.force:
        raise OutputExistsError(f"{out} exists; pass --force to overwrite it")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    loaded = load_for_export(Path(cfg.checkpoint), cfg.ensemble)
    model = FlipTTA(loaded.model).eval() if cfg.tta == "flip" else loaded.model
    n_cls = len(loaded.classes)

    val = None
    if cfg.data is not None:
        val = load_labelled(Path(cfg.data), "val", loaded.classes, loaded.spec, cfg.val_limit_per_class)
        log.info("val: %d images of %s", len(val), loaded.classes)

    with tempfile.TemporaryDirectory(prefix="fer-edge-export-") as tmp:
        raw = export_graph(model, loaded.spec.input_size, cfg.opset, Path(tmp) / "raw.onnx")
    check_graph_contract(raw, n_cls, "exported graph")
    simplified = simplify(raw)
    check_graph_contract(simplified, n_cls, "simplified graph")
    raw_bytes, fp32_bytes = raw.SerializeToString(), simplified.SerializeToString()

    inputs, source = _parity_inputs(cfg, loaded.spec, val)
    # One ONNX Runtime session per graph for every check, score and timing below.
    fp32_session = make_session(fp32_bytes, cfg.threads)
    parity, fp32_out = check_fp32_parity(model, raw_bytes, fp32_session, inputs, source, cfg)

    final, variant_session = simplified, None
    if cfg.variant is not None:
        final = make_variant(simplified, cfg, loaded.spec, loaded.classes)
        check_graph_contract(final, n_cls, f"{cfg.variant} graph")
        variant_session = make_session(final.SerializeToString(), cfg.threads)
        var_out = run_session(variant_session, inputs)
        check = compare(f"onnx {cfg.variant} vs onnx fp32", source, fp32_out, var_out, atol=None)
        if not np.isfinite(var_out).all():
            raise ExportError(f"{cfg.variant} graph produced non-finite logits; nothing written")
        parity.append(check)

    report_warnings: list[str] = []
    _check_weight_grid(cfg, loaded.config.qat_weight_bits, report_warnings)
    val_results, final_logits = _variant_val(cfg, fp32_session, variant_session, val, report_warnings)
    calibration = _calibration(cfg, final_logits, val, report_warnings)
    speed = _variant_speed(cfg, fp32_session, variant_session, inputs, report_warnings)
    extra = {
        "opset": cfg.opset,
        "exporter": f"torch.onnx TorchScript exporter (torch {torch.__version__}) + onnxsim",
        "checkpoint": Path(cfg.checkpoint).name,
        "checkpoint_sha256": loaded.sha256,
        "checkpoint_epoch": loaded.epoch,
        "checkpoint_val": _val_facts(loaded.val),
        "ensemble": [_member_facts(m) for m in loaded.members] or None,
        "parity": [p.to_dict() for p in parity],
        "val_by_precision": {k: v.to_dict() for k, v in val_results.items()},
        "speed_b32_ms_per_image": speed or None,
        "speed": measure_speed(variant_session or fp32_session, inputs, cfg.threads),
        "calibration": None if calibration is None or cfg.data is None else calibration_facts(calibration, cfg.data),
    }
    if cfg.weights != "fp32":
        extra["weights_storage"] = cfg.weights
    if cfg.precision == "int8":
        extra["quantization"] = {**cfg.quant.to_dict(), "calibration_images": cfg.calib_images}
    info = build_info(cfg, loaded, val_results, extra,
                      calibration.temperature if calibration is not None else 1.0)
    data = with_metadata(final, info)
    write_atomic(data, out, cfg.force)
    log.info("wrote %s", out)
    return ExportReport(
        out=out, info=info, nodes_exported=len(raw.graph.node), nodes_simplified=len(simplified.graph.node),
        nodes_written=len(final.graph.node), size_bytes=out.stat().st_size,
        fp32_size_bytes=len(fp32_bytes), parity=parity, val=val_results, speed_b32=speed,
        warnings=report_warnings, calibration=calibration,
    )
