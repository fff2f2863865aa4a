"""Reduced-precision variants of an exported fp32 graph: fp16, static int8, fp16 storage.

fp16 converts weights and compute to float16 but keeps float32 inputs and
outputs, so the runtime feeds it exactly like the fp32 model. fp16 *storage*
(:func:`with_fp16_weights`) halves an fp32 file and leaves its compute fp32.

int8 is ONNX Runtime static quantization calibrated on training images.
EfficientNet-B0 is a hard case for it: SiLU and squeeze-excitation gates
(Sigmoid * x) are sensitive to coarse activation grids, and depthwise
convolutions have few weights per output channel. :class:`QuantConfig`
therefore chooses *which* nodes are quantized (``scope``) besides the usual
format/calibration/type knobs; ``python -m benchmarks.quant_sweep`` measures
the combinations on a real checkpoint.

The default recipe (pointwise convs only, MinMax, per-channel, u8 activations,
s8 weights) is the one that stayed within the 1-point accuracy budget in that
sweep; on x86 CPUs it is *not* faster than fp32 (every int8 conv sits between
float ops, so each pays a quantize/dequantize pair). Recipes that quantize the
whole graph run faster but lose several points: export warns in both cases.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

QUANT_FORMATS = ("qoperator", "qdq")
QUANT_SCOPES = ("all", "all-but-se", "all-but-dw", "conv", "dense", "pointwise")
CALIB_METHODS = ("minmax", "entropy", "percentile")
INT8_TYPES = ("u8", "s8")

# Squeeze-excitation starts at a global pool; activations pass between its convs.
_POOL_OPS = ("GlobalAveragePool", "ReduceMean")
_ACTIVATION_OPS = ("Mul", "Sigmoid", "Relu", "Clip", "HardSigmoid", "HardSwish")
_CALIB_MAX_BATCHES_IN_MEMORY = 4


@dataclass
class QuantConfig:
    """How the int8 variant is made.

    Attributes:
        format: ``qoperator`` (QLinearConv etc.) or ``qdq`` (QuantizeLinear /
            DequantizeLinear pairs that ONNX Runtime fuses at load time).
        scope: Which nodes are quantized. ``all``: every op ONNX Runtime can
            quantize (incl. Sigmoid, Mul, Add, pooling); ``all-but-se``: the
            same outside squeeze-excitation (its convs and activations on
            1x1 maps cost little in float); ``all-but-dw``: all but the
            depthwise Convs (few weights per channel, the usual int8 casualty);
            ``conv``: every Conv,
            the rest stays float; ``dense``: group-1 Convs outside
            squeeze-excitation (stem, 1x1 expand/project, head); ``pointwise``:
            only the 1x1 group-1 Convs outside squeeze-excitation.
        calibrate_method: ``minmax``, ``entropy`` or ``percentile``. The last two
            hold every activation of every calibration image in memory (ONNX
            Runtime's histogram calibrators): ~10 GB for 300 images at 128 px.
        percentile: Percentile kept by the ``percentile`` method.
        per_channel: One weight scale per output channel.
        reduce_range: 7-bit weights (avoids int16 overflow on CPUs without VNNI).
        activation_type: ``u8`` or ``s8`` activations.
        weight_type: ``u8`` or ``s8`` weights.
        keep_ends_float: Leave the stem Conv and the classifier in float
            (the layers most sensitive to quantization in small nets).
        calib_batch: Images per calibration forward pass.
        pre_process: Run ONNX Runtime's recommended ``quant_pre_process``
            (symbolic shape inference, graph optimisation) before quantizing.
    """

    format: str = "qoperator"
    scope: str = "pointwise"
    calibrate_method: str = "minmax"
    percentile: float = 99.999
    per_channel: bool = True
    reduce_range: bool = False
    activation_type: str = "u8"
    weight_type: str = "s8"
    keep_ends_float: bool = False
    calib_batch: int = 16
    pre_process: bool = True

    def validate(self) -> None:
        """Raise ``ValueError`` naming the valid choices for any bad field."""
        for name, choices in (("format", QUANT_FORMATS), ("scope", QUANT_SCOPES),
                              ("calibrate_method", CALIB_METHODS),
                              ("activation_type", INT8_TYPES), ("weight_type", INT8_TYPES)):
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"int8 {name} {value!r} is not one of {choices}")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"int8 percentile must be in (50, 100], got {self.percentile}")
        if self.calib_batch < 1:
            raise ValueError(f"int8 calib_batch must be >= 1, got {self.calib_batch}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_label(cls, label: str) -> QuantConfig:
        """Inverse of :meth:`label` (fields not in the label keep their defaults).

        Raises:
            ValueError: malformed label; names the expected form.
        """
        parts = label.strip().split("/")
        form = ("FORMAT/SCOPE/CALIBRATION/per-channel|per-tensor/{u8|s8}{u8|s8}"
                "[/reduce-range][/float-ends][/no-preprocess]")
        flags = parts[5:]
        if (len(parts) < 5 or parts[3] not in ("per-channel", "per-tensor") or len(parts[4]) != 4
                or not set(flags) <= {"reduce-range", "float-ends", "no-preprocess"}
                or len(set(flags)) != len(flags)):
            raise ValueError(f"int8 recipe {label!r} is not of the form {form}")
        cfg = cls(format=parts[0], scope=parts[1], calibrate_method=parts[2],
                  per_channel=parts[3] == "per-channel", activation_type=parts[4][:2],
                  weight_type=parts[4][2:], reduce_range="reduce-range" in flags,
                  keep_ends_float="float-ends" in flags, pre_process="no-preprocess" not in flags)
        cfg.validate()
        return cfg

    def label(self) -> str:
        """Short description, e.g. ``qoperator/pointwise/percentile/per-channel/u8s8``."""
        parts = [self.format, self.scope, self.calibrate_method,
                 "per-channel" if self.per_channel else "per-tensor",
                 f"{self.activation_type}{self.weight_type}"]
        parts += [flag for flag, on in (("reduce-range", self.reduce_range),
                                         ("float-ends", self.keep_ends_float),
                                         ("no-preprocess", not self.pre_process)) if on]
        return "/".join(parts)


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """float16 weights and compute, float32 graph input and output."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True)


def with_fp16_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` that *stores* its weights in float16 and computes in float32.

    Every float32 initializer of rank >= 2 (convolution and dense weights:
    nearly all the bytes) is stored as float16 and widened by a ``Cast`` node
    in front of the graph. ONNX Runtime folds those casts into float32
    constants when a session loads, so inference runs the usual float32
    kernels on weights rounded to float16 (relative error <= 2**-11): half the
    file, the speed of fp32. Biases and other rank-1 tensors stay float32:
    they are few bytes and are added straight to the outputs.

    Raises:
        ValueError: A weight is outside float16's range (it would become inf).

    Example:
        >>> from onnx import TensorProto, helper, numpy_helper
        >>> w = numpy_helper.from_array(np.full((2, 3), 0.1, np.float32), "w")
        >>> g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w])
        >>> small = with_fp16_weights(helper.make_model(g))
        >>> [(i.name, i.data_type == TensorProto.FLOAT16) for i in small.graph.initializer]
        [('w_fp16', True)]
        >>> [n.op_type for n in small.graph.node]
        ['Cast', 'MatMul']
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    stored, casts, keep = [], [], []
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or len(init.dims) < 2:
            keep.append(init)
            continue
        weights = onnx.numpy_helper.to_array(init)
        if np.abs(weights).max(initial=0.0) > np.finfo(np.float16).max:
            raise ValueError(f"weight {init.name!r} exceeds float16's range; export it without fp16 weights")
        half = onnx.numpy_helper.from_array(weights.astype(np.float16), f"{init.name}_fp16")
        stored.append(half)
        casts.append(onnx.helper.make_node("Cast", [half.name], [init.name], name=f"{init.name}_to_fp32",
                                           to=onnx.TensorProto.FLOAT))
    del graph.initializer[:]
    graph.initializer.extend(keep + stored)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)  # first, so the node order stays topological
    onnx.checker.check_model(out)
    return out


def ensure_node_names(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name (quantization selects nodes by name)."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def squeeze_excite_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes inside squeeze-excitation blocks: their Convs and activations.

    Structural, not shape-based (at small inputs the last stages are 1x1 too):
    a node is SE when every path back from its inputs, through activations,
    ends at a global pool or at another SE node. The gate ``x * sigmoid(...)``
    and the projection Conv after it see the main path, so they are not SE.
    Relies on ONNX's topological node order.
    """
    producer = {out: n for n in model.graph.node for out in n.output}
    initializers = {i.name for i in model.graph.initializer}
    se: set[str] = set()

    def origins(node: onnx.NodeProto) -> set[str]:
        found: set[str] = set()
        for tensor in node.input:
            if not tensor or tensor in initializers:
                continue
            src = producer.get(tensor)
            if src is None:
                found.add("main")
            elif src.op_type in _POOL_OPS:
                found.add("pool")
            else:
                found.add("se" if src.name in se else "main")
        return found

    for node in model.graph.node:
        if node.op_type in ("Conv", *_ACTIVATION_OPS) and origins(node) <= {"pool", "se"}:
            se.add(node.name)
    return se


def squeeze_excite_convs(model: onnx.ModelProto) -> set[str]:
    """Names of the Convs inside squeeze-excitation blocks (see :func:`squeeze_excite_nodes`)."""
    se = squeeze_excite_nodes(model)
    return {n.name for n in model.graph.node if n.op_type == "Conv" and n.name in se}


def end_nodes(model: onnx.ModelProto) -> set[str]:
    """The stem Conv (reads the graph input) and the classifier Gemm/MatMul nodes."""
    graph_inputs = {i.name for i in model.graph.input}
    stem = {n.name for n in model.graph.node if n.op_type == "Conv" and n.input[0] in graph_inputs}
    # The TTA wrapper puts a Concat between input and stem: take the first Conv then.
    first_conv = next((n.name for n in model.graph.node if n.op_type == "Conv"), None)
    head = {n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul")}
    return (stem or ({first_conv} if first_conv else set())) | head


def select_nodes(model: onnx.ModelProto, scope: str, keep_ends_float: bool = False) -> list[str]:
    """Names of the nodes to quantize for ``scope`` (see :class:`QuantConfig`).

    ``all`` returns every node (the quantizer itself skips ops it cannot
    handle); ``all-but-se`` every node outside squeeze-excitation.
    """
    if scope not in QUANT_SCOPES:
        raise ValueError(f"int8 scope {scope!r} is not one of {QUANT_SCOPES}")
    ensure_node_names(model)
    se = squeeze_excite_nodes(model)
    skip = end_nodes(model) if keep_ends_float else set()
    chosen = []
    for node in model.graph.node:
        if node.name in skip:
            continue
        group = _attr(node, "group", 1)
        kernel = list(_attr(node, "kernel_shape", []))
        is_conv = node.op_type == "Conv"
        if (scope == "all"
                or (scope == "all-but-se" and node.name not in se)
                or (scope == "all-but-dw" and not (is_conv and group > 1))
                or (scope == "conv" and is_conv)
                or (scope == "dense" and is_conv and group == 1 and node.name not in se)
                or (scope == "pointwise" and is_conv and group == 1 and node.name not in se
                    and kernel == [1, 1])):
            chosen.append(node.name)
    return chosen


def calib_cap(n_batches: int, cap: int = _CALIB_MAX_BATCHES_IN_MEMORY) -> int:
    """ORT's ``CalibMaxIntermediateOutputs`` for ``n_batches`` calibration batches.

    ONNX Runtime's MinMax calibrator folds its buffered outputs every ``cap``
    batches; when ``n_batches`` is a multiple of ``cap`` the buffer is empty at
    the end and it raises "No data is collected" (seen with 200 images in
    batches of 16: 12 batches, cap 4). So the cap is nudged to one that leaves
    a remainder, or above ``n_batches`` (no folding) for tiny sets.

    Example:
        >>> calib_cap(18), calib_cap(12), calib_cap(3)
        (4, 5, 4)
    """
    while cap <= n_batches and n_batches % cap == 0:
        cap += 1
    return cap


def to_int8(model: onnx.ModelProto, calibration: np.ndarray, cfg: QuantConfig,
            input_name: str = "input") -> onnx.ModelProto:
    """Static int8 quantization of an fp32 graph, calibrated on ``calibration`` inputs.

    Args:
        model: Simplified fp32 graph (not modified).
        calibration: float32 (N, 3, S, S) preprocessed training images.
        cfg: Quantization recipe.
        input_name: Name of the graph input.

    Returns:
        The quantized graph.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    cfg.validate()
    if len(calibration) == 0:
        raise ValueError("int8 needs calibration images; got none")
    batch = min(cfg.calib_batch, len(calibration))
    # ORT's histogram calibrators stack per-batch outputs: every batch must have the same size.
    calibration = calibration[: len(calibration) // batch * batch]

    class _Reader(CalibrationDataReader):
        """Feeds the calibration array in equal batches."""

        def __init__(self) -> None:
            self._batches = iter([{input_name: calibration[i : i + batch]}
                                  for i in range(0, len(calibration), batch)])

        def get_next(self) -> dict | None:
            return next(self._batches, None)

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.calibrate_method]
    qtype = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
    # Without a cap the MinMax calibrator keeps every intermediate tensor of every
    # batch; capped, it folds them into running ranges. ORT's histogram calibrators
    # (entropy, percentile) ignore the cap: ~33 MB per calibration image at 128 px.
    extra: dict = {"CalibMaxIntermediateOutputs": calib_cap(len(calibration) // batch)}
    if cfg.calibrate_method == "percentile":
        extra["CalibPercentile"] = cfg.percentile
    with tempfile.TemporaryDirectory(prefix="fer-edge-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, src)
        if cfg.pre_process:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            # ORT's recommended step: shape inference plus graph optimisation
            # (BN folding, constant folding) so the quantizer sees final nodes.
            pre = Path(tmp) / "pre.onnx"
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
            src = pre
        # Nodes are chosen on the graph that is quantized (pre-processing renames some).
        graph = onnx.load(src)
        chosen = set(select_nodes(graph, cfg.scope, cfg.keep_ends_float))
        excluded = [n.name for n in graph.graph.node if n.name not in chosen]
        onnx.save(graph, src)
        conv_only = cfg.scope in ("conv", "dense", "pointwise")
        quantize_static(
            src, dst, _Reader(),
            quant_format=QuantFormat.QOperator if cfg.format == "qoperator" else QuantFormat.QDQ,
            op_types_to_quantize=["Conv"] if conv_only else None,
            nodes_to_exclude=excluded,
            per_channel=cfg.per_channel,
            reduce_range=cfg.reduce_range,
            activation_type=qtype[cfg.activation_type],
            weight_type=qtype[cfg.weight_type],
            calibrate_method=method,
            extra_options=extra,
        )
        return onnx.load(dst)
