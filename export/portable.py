"""Rewrite an exported graph into a form every ONNX runtime reads.

Flip test-time augmentation is exported (see :class:`export.onnx_export.FlipTTA`)
as one pass over a batch ``Concat([x, flip(x)])`` whose logits are sliced back
into halves and averaged. ONNX Runtime and OpenVINO run that; OpenCV's DNN
module does not (it fixes the batch when it reads the graph, and its Concat
parser fails on the dynamic-batch concatenation:
``Node [Concat]... parse error ... Incorrect size of input array``).

:func:`unfold_flip_tta` rewrites the graph, not the weights: the network body
is emitted twice, once on ``x`` and once on ``flip(x)``, both copies reading
the *same* initializers (so the file barely grows), and the two logit tensors
are averaged by the original ``Add``/``Div``. No batch concatenation, no
dynamic slicing, same arithmetic per image, so the logits agree with the
original to float rounding. The training checkpoint is not needed, which
matters for shipped models whose checkpoint is gone.

An int8 QDQ model (``fast``) has three forms for OpenCV DNN, whose arithmetic
is not ONNX Runtime's (it runs QDQ as float Conv with Quantize/Dequantize
layers, not integer kernels):

* ``--emulate-int8`` (:func:`emulate_int8`): ONNX Runtime's integer arithmetic
  in float ops, so OpenCV gives its int8 logits bit for bit (``fast``: 2155
  of 2155 val images, max diff 0), at about 1.2-1.5x the OpenCV time of the QDQ
  file (measured on a busy 2-core machine);
* ``--gemm-bias-row`` (:func:`gemm_bias_as_row`): the QDQ file with one fix,
  for an OpenCV bug that made it give wrong logits for every image but the
  first of a batch (``fast``: 2150 of 2155, same cost);
* ``--dequantize`` (:func:`dequantize_qdq`): fp32, no activation rounding
  (``fast``: 2140 of 2155).

Usage (rerunnable; a graph without the pattern is reported and left alone)::

    python -m export.portable fer_edge/models/default.onnx --out fer_edge/models/default.onnx \\
        --force --data ../shared/data/fer2013
    python -m export.portable fer_edge/models/fast.onnx --out fast-opencv.onnx --emulate-int8 \\
        --data ../shared/data/fer2013

Exit status: 0 written (or already portable); 1 the rewritten graph failed
its parity check (nothing written); 2 bad arguments or no such file.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fer_edge.metadata import METADATA_KEY

#: Suffix of the tensors and nodes of the body's second copy (the mirrored image).
MIRROR_SUFFIX = "__mirror"

#: Parity the rewrite must meet against the original graph (ONNX Runtime, CPU).
PARITY_ATOL = 1e-5


class NotApplicable(ValueError):
    """The graph has no batch-concat flip TTA to unfold."""


@dataclass
class FlipPattern:
    """Where the batch-concat flip TTA sits in a graph.

    Attributes:
        image: The tensor holding the input images ``x``.
        mirror: The tensor holding ``flip(x)``.
        concat: The ``Concat`` node building ``[x, flip(x)]``.
        body_output: The logits of the 2N-image batch, before slicing.
        halves: The two ``Slice`` nodes cutting ``body_output`` into N and N.
        combine: The node adding the two halves.
    """

    image: str
    mirror: str
    concat: onnx.NodeProto
    body_output: str
    halves: tuple[onnx.NodeProto, onnx.NodeProto]
    combine: onnx.NodeProto


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _axis(node: onnx.NodeProto) -> int | None:
    for attr in node.attribute:
        if attr.name == "axis":
            return int(helper.get_attribute_value(attr))
    return None


def dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None = None, axis: int = 1) -> np.ndarray:
    """ONNX ``DequantizeLinear`` as ONNX Runtime computes it: ``(q - zero) * scale`` in float32.

    Per tensor (scalar ``scale``) or per channel along ``axis`` (1-D ``scale``).

    Example:
        >>> q = np.array([[2, 4], [6, 8]], dtype=np.int8)
        >>> dequantize(q, np.array([0.5, 0.25], np.float32), None, axis=0).tolist()
        [[1.0, 2.0], [1.5, 2.0]]
    """
    codes = q.astype(np.float64)  # exact for every int8/int32 code and zero point
    if zero is not None:
        codes = codes - _along(np.asarray(zero, np.float64), codes.ndim, axis)
    return codes.astype(np.float32) * _along(np.asarray(scale, np.float32), codes.ndim, axis)


def _along(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """``v`` shaped to broadcast along ``axis`` of an ``ndim``-D tensor (a scalar stays one)."""
    if v.size == 1:
        return v.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = v.size
    return v.reshape(shape)


def dequantize_node(node: onnx.NodeProto, value: Callable[[str], np.ndarray]) -> np.ndarray:
    """What a ``DequantizeLinear`` node of constants computes; ``value`` gives each input's array."""
    zero = value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    axis = _axis(node)
    return dequantize(value(node.input[0]), value(node.input[1]), zero, 1 if axis is None else axis)


def find_flip_tta(graph: onnx.GraphProto) -> FlipPattern:
    """Locate ``Concat([x, flip(x)], axis=0) -> body -> Slice halves -> Add``.

    Raises:
        NotApplicable: No such pattern (e.g. a model exported without TTA, or
            one already rewritten).
    """
    producers = _producers(graph)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for concat in graph.node:
        if concat.op_type != "Concat" or _axis(concat) != 0 or len(concat.input) != 2:
            continue
        image, mirror = concat.input
        flip = producers.get(mirror)
        # The mirror is a reversing Slice (or any single op) of the image itself.
        if flip is None or flip.op_type not in ("Slice", "ReverseSequence", "Gather") or flip.input[0] != image:
            continue
        # Every node downstream of the concatenation.
        downstream: list[onnx.NodeProto] = []
        reached = {concat.output[0]}
        for node in graph.node:  # nodes are stored in topological order
            if any(name in reached for name in node.input):
                downstream.append(node)
                reached.update(node.output)
        for add in downstream:
            if add.op_type != "Add":
                continue
            halves = [producers.get(name) for name in add.input]
            if len(halves) != 2:
                continue
            h0, h1 = halves
            if (h0 is not None and h1 is not None and h0.op_type == "Slice" and h1.op_type == "Slice"
                    and h0.input[0] == h1.input[0]):
                return FlipPattern(image, mirror, concat, h0.input[0], (h0, h1), add)
    raise NotApplicable("no batch Concat([x, flip(x)]) -> Slice halves -> Add pattern "
                        "(no flip TTA, or already rewritten)")


def _body_nodes(graph: onnx.GraphProto, pattern: FlipPattern) -> list[onnx.NodeProto]:
    """Nodes that are downstream of the concatenation and feed the body output."""
    producers = _producers(graph)
    needed: set[str] = set()
    stack = [pattern.body_output]
    concat_out = pattern.concat.output[0]
    while stack:
        name = stack.pop()
        node = producers.get(name)
        if node is None or name == concat_out or node.name in needed:
            continue
        needed.add(node.name)
        stack.extend(node.input)
    # Ancestors of the body output that do not depend on the concatenation
    # (shape constants...) are shared by both copies, not duplicated.
    reached = {concat_out}
    body = []
    for node in graph.node:
        if any(name in reached for name in node.input):
            reached.update(node.output)
            if node.name in needed:
                body.append(node)
    return body


def unfold_flip_tta(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with its batch-concat flip TTA emitted as two passes.

    Args:
        model: An ONNX model whose graph contains the pattern of :func:`find_flip_tta`.

    Returns:
        A new model: the body on ``x`` (original tensor names) and on
        ``flip(x)`` (names + :data:`MIRROR_SUFFIX`), sharing initializers;
        the halves' ``Slice`` nodes and the concatenation are gone; nodes left
        without a consumer are pruned. Metadata is copied unchanged.

    Raises:
        NotApplicable: The graph has no such pattern.
    """
    model = copy.deepcopy(model)
    graph = model.graph
    if any(not n.name for n in graph.node):
        for i, node in enumerate(graph.node):  # names identify body nodes below
            node.name = node.name or f"_unnamed_{i}"
    pattern = find_flip_tta(graph)
    body = _body_nodes(graph, pattern)
    body_names = {n.name for n in body}
    body_tensors = {out for n in body for out in n.output}
    concat_out = pattern.concat.output[0]

    def mirrored(node: onnx.NodeProto) -> onnx.NodeProto:
        twin = copy.deepcopy(node)
        twin.name = node.name + MIRROR_SUFFIX
        for i, name in enumerate(twin.input):
            if name == concat_out:
                twin.input[i] = pattern.mirror
            elif name in body_tensors:
                twin.input[i] = name + MIRROR_SUFFIX
        for i, name in enumerate(twin.output):
            twin.output[i] = name + MIRROR_SUFFIX
        return twin

    nodes: list[onnx.NodeProto] = []
    last_body = max(i for i, n in enumerate(graph.node) if n.name in body_names)
    for i, node in enumerate(graph.node):
        if node.name == pattern.concat.name:
            continue
        if node.name in body_names:
            first = copy.deepcopy(node)
            for j, name in enumerate(first.input):
                if name == concat_out:
                    first.input[j] = pattern.image
            nodes.append(first)
        elif node.name == pattern.combine.name:
            combine = copy.deepcopy(node)
            # Which Slice took the first half (starts at 0) decides the order;
            # the sum is the same either way, but keep the original's.
            first_half = _starts_at_zero(graph, pattern.halves[0])
            a, b = (pattern.body_output, pattern.body_output + MIRROR_SUFFIX)
            combine.input[0], combine.input[1] = (a, b) if first_half else (b, a)
            nodes.append(combine)
        else:
            nodes.append(node)
        if i == last_body:
            # After every node the body reads, so the order stays topological.
            nodes.extend(mirrored(n) for n in body)
    nodes = [_gather_flip(graph, n) if n.output[0] == pattern.mirror else n for n in nodes]
    return _with_nodes(model, nodes)


def _with_nodes(model: onnx.ModelProto, nodes: list[onnx.NodeProto],
                new_inits: Sequence[onnx.TensorProto] = ()) -> onnx.ModelProto:
    """``model`` with its nodes replaced by ``nodes`` (pruned), unused initializers dropped, checked."""
    graph = model.graph
    del graph.node[:]
    graph.node.extend(_prune(nodes, [o.name for o in graph.output]))
    graph.initializer.extend(new_inits)
    used = {name for n in graph.node for name in n.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    # Intermediate shapes recorded for the old graph (e.g. the 2N batch) would now be wrong.
    del graph.value_info[:]
    onnx.checker.check_model(model)
    return model


def _gather_flip(graph: onnx.GraphProto, flip: onnx.NodeProto) -> onnx.NodeProto:
    """``flip`` as a ``Gather`` of the columns in reverse order.

    OpenCV DNN reads a ``Slice`` with step -1 as an empty slice (output width
    ``-W + 1``); a ``Gather`` with constant indices is read by every runtime
    and copies the same values, so the result is bit-identical.
    """
    if not _is_width_flip(graph, flip):
        return flip
    dims = {i.name: i.type.tensor_type.shape.dim for i in graph.input}
    dim = dims.get(flip.input[0])
    if dim is None or len(dim) != 4 or not dim[3].dim_value:
        return flip  # width unknown: keep the Slice (ONNX Runtime and OpenVINO read it)
    width = dim[3].dim_value
    name = flip.output[0] + "_indices"
    graph.initializer.append(numpy_helper.from_array(np.arange(width - 1, -1, -1, dtype=np.int64), name))
    return helper.make_node("Gather", [flip.input[0], name], [flip.output[0]], name=flip.name + "_gather",
                            axis=3)


def _const(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """The value of an initializer or ``Constant`` output, else ``None``."""
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            value = next((a for a in node.attribute if a.name == "value"), None)
            return None if value is None else numpy_helper.to_array(value.t)
    return None


def _starts_at_zero(graph: onnx.GraphProto, node: onnx.NodeProto) -> bool:
    starts = _const(graph, node.input[1]) if len(node.input) > 1 else None
    return starts is None or bool(np.all(starts == 0))


def _is_width_flip(graph: onnx.GraphProto, node: onnx.NodeProto) -> bool:
    """``node`` is ``Slice(x, starts=-1, ends=<min>, axes=-1 or 3, steps=-1)``."""
    if node.op_type != "Slice" or len(node.input) != 5:
        return False
    starts, ends, axes, steps = (_const(graph, n) for n in node.input[1:])
    return (starts is not None and ends is not None and axes is not None and steps is not None
            and starts.tolist() == [-1] and steps.tolist() == [-1] and axes.tolist() in ([-1], [3])
            and int(ends[0]) <= -(2 ** 31))


def _prune(nodes: list[onnx.NodeProto], outputs: list[str]) -> list[onnx.NodeProto]:
    """``nodes`` without those no graph output depends on."""
    needed = set(outputs)
    keep = []
    for node in reversed(nodes):
        if any(out in needed for out in node.output):
            keep.append(node)
            needed.update(node.input)
    return keep[::-1]


def dequantize_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """An fp32 graph of an int8 QDQ model, for runtimes whose int8 path differs.

    OpenCV DNN 4.14 runs a QDQ graph as float layers with Quantize/Dequantize
    layers between them, and its QDQ graph of ``fast`` gives wrong logits for
    every image of a batch but the first (see :func:`gemm_bias_as_row`). This
    gives such runtimes the same network in float instead (for ONNX Runtime's
    int8 results exactly, see :func:`emulate_int8`):

    * weights: each ``DequantizeLinear`` of a constant becomes the float
      initializer it computes, so the weights are exactly the int8 values the
      quantized model uses;
    * activations: each ``QuantizeLinear -> DequantizeLinear`` pair becomes a
      ``Clip`` to the range it can represent. The quantizer removes ReLU6/ReLU
      nodes whose clipping the uint8 range already does, so dropping the pair
      would drop them; only the rounding to 256 levels is lost.

    Returns:
        A new model (metadata copied; ``precision`` is left to the caller).
    """
    model = copy.deepcopy(model)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producers = _producers(graph)
    new_inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def array(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name])

    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            value = dequantize_node(node, array)
            new_inits.append(numpy_helper.from_array(value, node.output[0]))
        elif node.op_type == "QuantizeLinear":
            continue  # handled at its DequantizeLinear
        elif node.op_type == "DequantizeLinear" and producers.get(node.input[0], node).op_type == "QuantizeLinear":
            quant = producers[node.input[0]]
            q_scale = float(array(quant.input[1]))
            zp_init = inits[quant.input[2]]
            q_zp = float(numpy_helper.to_array(zp_init))
            info = np.iinfo(helper.tensor_dtype_to_np_dtype(zp_init.data_type))
            lo, hi = (info.min - q_zp) * q_scale, (info.max - q_zp) * q_scale
            lo_name, hi_name = node.output[0] + "_clip_min", node.output[0] + "_clip_max"
            new_inits += [numpy_helper.from_array(np.array(lo, np.float32), lo_name),
                          numpy_helper.from_array(np.array(hi, np.float32), hi_name)]
            nodes.append(helper.make_node("Clip", [quant.input[0], lo_name, hi_name], [node.output[0]],
                                          name=node.name + "_clip"))
        else:
            nodes.append(node)
    return _with_nodes(model, nodes, new_inits)


def gemm_bias_as_row(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with each ``Gemm``'s bias ``C`` given as a float ``(1, N)`` constant.

    OpenCV DNN 4.14 stores a 1-D Gemm bias as an ``(N, 1)`` blob and then does
    not broadcast it over the batch: row 0 of a batch gets the bias, rows 1+
    get whatever memory follows it (measured on ``fast``: ~1e-8, NaN, 1e33),
    which the int8 graph's output ``QuantizeLinear`` turns into saturated
    logits. At batch 1 nothing is wrong, so single-image checks miss it. A
    ``(1, N)`` bias is broadcast correctly. Where the bias is the
    ``DequantizeLinear`` of an int32 constant, the new constant is the float
    it dequantizes to (as ONNX Runtime computes it); nothing else changes, so
    ONNX Runtime gives the same logits.

    Raises:
        NotApplicable: No ``Gemm`` with a constant 1-D bias.
    """
    model = copy.deepcopy(model)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producers = _producers(graph)
    new_inits: list[onnx.TensorProto] = []
    for node in graph.node:
        if node.op_type != "Gemm" or len(node.input) < 3 or not node.input[2]:
            continue
        bias = node.input[2]
        dq = producers.get(bias)
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
            value = dequantize_node(dq, lambda name: numpy_helper.to_array(inits[name]))
        elif bias in inits:
            value = numpy_helper.to_array(inits[bias])
        else:
            continue
        if value.ndim != 1:
            continue
        name = bias + "_row"
        new_inits.append(numpy_helper.from_array(value.astype(np.float32).reshape(1, -1), name))
        node.input[2] = name
    if not new_inits:
        raise NotApplicable("no Gemm with a constant 1-D bias")
    return _with_nodes(model, list(graph.node), new_inits)


@dataclass
class _Act:
    """An activation of the emulated graph: integer codes minus the zero point, held in float.

    Attributes:
        name: The tensor holding ``q - zero_point`` (small integers, exact in float32).
        scale: The quantization scale (float32, as ONNX Runtime reads it).
        zero_point: The zero point.
        lo: Smallest code (0 for uint8, -128 for int8).
        hi: Largest code.
    """

    name: str
    scale: np.float32
    zero_point: int
    lo: int
    hi: int


#: Suffix of the constants :func:`emulate_int8` adds.
EMULATED_SUFFIX = "__int8emu"

#: 1.5 * 2^23: ``(v + m) - m`` in float32 is ``v`` rounded to an integer, ties to even (``|v| < 2^22``).
ROUNDING_MAGIC = 12582912.0

#: Table size of an emulated QLinearAdd: every pair of 8-bit codes.
ADD_TABLE_SIZE = 256 * 256


def ort_add_table(a: _Act, b: _Act, c: _Act) -> np.ndarray:
    """ONNX Runtime's QLinearAdd result for every pair of input codes, as ``q - zero_point``.

    Computed by ONNX Runtime's own kernel (``com.microsoft.QLinearAdd``, the op
    its QDQ fusion makes of ``DequantizeLinear -> Add -> QuantizeLinear``),
    on this machine: entry ``(qa - lo) * 256 + (qb - lo)``.
    """
    import onnxruntime as ort
    from onnx import TensorProto

    from fer_edge.providers import session_options

    elem = TensorProto.UINT8 if a.lo == 0 else TensorProto.INT8
    dtype = np.uint8 if a.lo == 0 else np.int8

    def scalar(name: str, value: float | int, kind: int) -> onnx.TensorProto:
        return helper.make_tensor(name, kind, [], [value])

    node = helper.make_node("QLinearAdd", ["a", "sa", "za", "b", "sb", "zb", "sc", "zc"], ["c"],
                            domain="com.microsoft")
    graph = helper.make_graph(
        [node], "qlinear_add_table",
        [helper.make_tensor_value_info("a", elem, [ADD_TABLE_SIZE]),
         helper.make_tensor_value_info("b", elem, [ADD_TABLE_SIZE])],
        [helper.make_tensor_value_info("c", elem, [ADD_TABLE_SIZE])],
        [scalar("sa", float(a.scale), TensorProto.FLOAT), scalar("za", a.zero_point, elem),
         scalar("sb", float(b.scale), TensorProto.FLOAT), scalar("zb", b.zero_point, elem),
         scalar("sc", float(c.scale), TensorProto.FLOAT), scalar("zc", c.zero_point, elem)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    codes = np.arange(a.lo, a.hi + 1)
    qa, qb = (x.ravel().astype(dtype) for x in np.meshgrid(codes, codes, indexing="ij"))
    session = ort.InferenceSession(model.SerializeToString(), session_options(1),
                                   providers=["CPUExecutionProvider"])
    out = session.run(None, {"a": qa, "b": qb})[0]
    return (out.astype(np.int32) - c.zero_point).astype(np.float32)


def emulate_int8(model: onnx.ModelProto,
                 add_table: Callable[[_Act, _Act, _Act], np.ndarray] = ort_add_table) -> onnx.ModelProto:
    """A float graph that computes ONNX Runtime's int8 results exactly, for OpenCV DNN.

    ONNX Runtime runs an int8 QDQ graph as fused integer kernels (QLinearConv,
    QLinearAdd, QLinearGlobalAveragePool, QGemm): int32 accumulation, then one
    float32 requantization. OpenCV DNN (and :func:`dequantize_qdq`) compute
    in float instead, so some outputs land on the other side of a rounding
    boundary (about 1 in 10^5 per layer), and the flips grow through the
    network. This graph does ONNX Runtime's arithmetic with float ops that
    OpenCV evaluates exactly:

    * activations are carried as their codes minus the zero point
      (``q - zp``, small integers, exact in float32); zero padding is then
      the zero point, as in ONNX Runtime;
    * Conv and Gemm take the int8 weights and int32 biases as integer-valued
      floats (kept as integers in the file, behind a scale-1
      ``DequantizeLinear`` that runtimes fold when they load it: 4.7 MB for
      ``fast`` instead of 12), so the accumulation is the integer one, exact
      while each partial sum stays below 2^24 in magnitude (max measured on
      64 of ``fast``'s val images: 1.1e6, but for dead channels whose int32
      bias is clipped near -2^31 and whose output saturates at the lowest code
      either way); then ``Mul`` by ONNX Runtime's own float32 multiplier
      ``(x_scale * w_scale) / y_scale``, ``Clip`` to the code range and
      rounding half to even (as its requantization; by adding and subtracting
      1.5 * 2^23, as OpenCV's ``Round`` is slow);
    * GlobalAveragePool is an integer ``ReduceSum`` times
      ``x_scale / (y_scale * H * W)`` in float32, as ONNX Runtime computes it;
    * Add goes through a table of all 65,536 input-code pairs made by ONNX
      Runtime's own QLinearAdd kernel (whose fused-multiply-add rounding float
      ops cannot repeat): ``Gather(table, Cast(a * 256 + b))``, reshaped;
    * a Gemm's bias is a float ``(1, N)`` row (see :func:`gemm_bias_as_row`;
      OpenCV misreads it behind a ``DequantizeLinear`` too);
    * the graph output is its ``DequantizeLinear``: ``(q - zp) * scale``.

    Measured on ``fast``: OpenCV DNN 4.14 and ONNX Runtime both give the QDQ
    file's ONNX Runtime logits bit for bit on all 2,155 val images, at batch 1
    and 64. The formulas were checked against ONNX Runtime 1.32's kernels on an
    x86-64 CPU with AVX-512 VNNI; the table is computed by the installed ONNX
    Runtime, and other CPUs' int8 kernels may round otherwise (as they would
    for the QDQ file itself). The emulated graph is slow in ONNX Runtime (it
    dequantizes the weights at every run): it is a form for OpenCV.

    Raises:
        NotApplicable: Not an int8 QDQ graph, or it holds an op this does not
            emulate (only Conv, Gemm, Add, GlobalAveragePool, Flatten and
            Reshape between QuantizeLinear/DequantizeLinear pairs are).
    """
    model = copy.deepcopy(model)
    graph = model.graph
    if not any(n.op_type == "QuantizeLinear" for n in graph.node):
        raise NotApplicable("no QuantizeLinear nodes; not an int8 QDQ model")
    inits = {i.name: i for i in graph.initializer}
    producers = _producers(graph)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    shapes = _static_shapes(model)
    acts: dict[str, _Act] = {}  # QuantizeLinear / activation DequantizeLinear outputs
    nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []

    def array(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name])

    def const(name: str, value: np.ndarray) -> str:
        name += EMULATED_SUFFIX  # never an initializer of the original graph
        new_inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(op_type: str, inputs: list[str], output: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def qparams(node: onnx.NodeProto, base: str) -> _Act:
        """Scale and zero point of a QuantizeLinear/DequantizeLinear node."""
        if len(node.input) < 3 or not node.input[2] or node.input[1] not in inits:
            raise NotApplicable(f"{node.name}: no constant zero point")
        zp_init = inits[node.input[2]]
        zp = numpy_helper.to_array(zp_init)
        if zp.size != 1 or array(node.input[1]).size != 1:
            raise NotApplicable(f"{node.name}: per-channel activation quantization")
        info = np.iinfo(helper.tensor_dtype_to_np_dtype(zp_init.data_type))
        if info.bits != 8:
            raise NotApplicable(f"{node.name}: {info.dtype} activations (only 8-bit are emulated)")
        return _Act(base, np.float32(array(node.input[1]).reshape(())), int(zp.reshape(())), int(info.min),
                    int(info.max))

    def act_input(name: str) -> _Act:
        if name not in acts:
            raise NotApplicable(f"{name}: not the DequantizeLinear of a quantized activation")
        return acts[name]

    def output_quant(node: onnx.NodeProto) -> onnx.NodeProto:
        users = consumers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != "QuantizeLinear" or node.output[0] in outputs:
            raise NotApplicable(f"{node.name}: output not quantized by one QuantizeLinear")
        return users[0]

    def to_codes(value: str, quant: onnx.NodeProto) -> None:
        """``value`` clipped to ``quant``'s code range and rounded half to even, as ``quant``'s output.

        ``Round`` would do, but OpenCV's costs 13 of 21 ms on ``fast`` (it switches the FPU
        rounding mode per element). Adding and subtracting 1.5 * 2^23 rounds a float32 of
        magnitude below 2^22 to the nearest integer, ties to even, exactly.
        """
        out = qparams(quant, quant.output[0] + "_int")
        base = quant.output[0]
        clipped = op("Clip", [value, const(base + "_lo", np.array(out.lo - out.zero_point, np.float32)),
                              const(base + "_hi", np.array(out.hi - out.zero_point, np.float32))], base + "_clipped")
        magic = const(base + "_round", np.array(ROUNDING_MAGIC, np.float32))
        op("Sub", [op("Add", [clipped, magic], base + "_rounding"), magic], out.name)
        acts[quant.output[0]] = out

    def requantize(acc: str, multiplier: np.ndarray, quant: onnx.NodeProto) -> None:
        """``acc * multiplier`` rounded to ``quant``'s codes (ONNX Runtime's requantization)."""
        base = quant.output[0]
        to_codes(op("Mul", [acc, const(base + "_multiplier", multiplier.astype(np.float32))], base + "_scaled"),
                 quant)

    def integer_const(dq: onnx.NodeProto, name: str) -> str:
        """``q - zp`` of a quantized constant as floats, kept as its integers (a quarter of the size).

        A ``DequantizeLinear`` with scale 1 of the original integers and zero point: every
        runtime folds it into the float constant ``q - zp`` when it loads the graph.
        """
        q = array(dq.input[0])
        scale = np.ones(array(dq.input[1]).shape, np.float32)
        inputs = [const(name + "_q", q), const(name + "_one", scale)]
        if len(dq.input) > 2 and dq.input[2]:
            inputs.append(const(name + "_zp", array(dq.input[2])))
        axis = _axis(dq)
        return op("DequantizeLinear", inputs, name + EMULATED_SUFFIX, **({} if axis is None else {"axis": axis}))

    def weights(node: onnx.NodeProto, index: int) -> tuple[np.ndarray, np.ndarray, onnx.NodeProto]:
        """Integer weights (``q - zp``, float32), float32 per-output scales, and the DequantizeLinear."""
        dq = producers.get(node.input[index])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            raise NotApplicable(f"{node.name}: input {index} is not a quantized constant")
        q = array(dq.input[0]).astype(np.int64)
        scale = array(dq.input[1]).astype(np.float32)
        zp = array(dq.input[2]).astype(np.int64) if len(dq.input) > 2 and dq.input[2] else np.zeros((), np.int64)
        if scale.ndim == 1 and q.ndim > 1 and zp.ndim == 1:
            shape = [1] * q.ndim
            axis = _axis(dq)
            shape[axis if axis is not None else 1] = -1
            zp = zp.reshape(shape)
        return (q - zp).astype(np.float32), scale.reshape(-1), dq

    def bias(node: onnx.NodeProto, x: _Act, w_scale: np.ndarray, n_out: int) -> np.ndarray | None:
        if len(node.input) < 3 or not node.input[2]:
            return None
        q, scale, _ = weights(node, 2)
        want = (np.float32(x.scale) * np.broadcast_to(w_scale, (n_out,))).astype(np.float32)
        if not np.allclose(np.broadcast_to(scale, (n_out,)), want, rtol=1e-5, atol=0):
            raise NotApplicable(f"{node.name}: bias scale is not x_scale * w_scale")
        return q.reshape(-1)

    def multiplier(x: _Act, w_scale: np.ndarray, y: _Act) -> np.ndarray:
        # ONNX Runtime's QLinearConv/QGemm: (X_scale * W_scale[i]) / Y_scale, in float32.
        return (np.float32(x.scale) * w_scale.astype(np.float32)) / np.float32(y.scale)

    for node in graph.node:
        kind = node.op_type
        if kind == "DequantizeLinear" and node.input[0] in inits:
            continue  # constants: read where they are used
        if kind == "QuantizeLinear":
            if node.output[0] in acts:
                continue  # emitted with the op that feeds it
            if node.input[0] in producers or node.input[0] in inits:
                raise NotApplicable(f"{node.name}: quantizes a tensor this does not emulate")
            # A graph input: ONNX Runtime's QuantizeLinear, x / scale rounded half to even.
            base = node.output[0]
            scale = np.array(qparams(node, "").scale, np.float32)
            to_codes(op("Div", [node.input[0], const(base + "_scale", scale)], base + "_divided"), node)
        elif kind == "DequantizeLinear":
            src_act = act_input(node.input[0])
            own = qparams(node, src_act.name)
            if (own.scale, own.zero_point) != (src_act.scale, src_act.zero_point):
                raise NotApplicable(f"{node.name}: dequantizes with other parameters than it was quantized")
            acts[node.output[0]] = src_act
            if node.output[0] in outputs:
                op("Mul", [src_act.name, const(node.output[0] + "_scale", np.array(src_act.scale, np.float32))],
                   node.output[0])
        elif kind == "Conv":
            x = act_input(node.input[0])
            w, w_scale, w_dq = weights(node, 1)
            quant = output_quant(node)
            b = bias(node, x, w_scale, w.shape[0])
            inputs = [x.name, integer_const(w_dq, node.name + "_w_int")]
            if b is not None:
                inputs.append(integer_const(producers[node.input[2]], node.name + "_b_int"))
            conv = helper.make_node("Conv", inputs, [node.output[0] + "_acc"], name=node.name)
            conv.attribute.extend(node.attribute)
            nodes.append(conv)
            y = qparams(quant, "")
            m = np.broadcast_to(multiplier(x, w_scale, y), (w.shape[0],)).reshape(1, -1, 1, 1)
            requantize(conv.output[0], m, quant)
        elif kind == "Gemm":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                raise NotApplicable(f"{node.name}: Gemm with transA, alpha or beta")
            x = act_input(node.input[0])
            w, w_scale, w_dq = weights(node, 1)
            n_out = w.shape[0] if attrs.get("transB", 0) else w.shape[1]
            quant = output_quant(node)
            b = bias(node, x, w_scale, n_out)
            inputs = [x.name, integer_const(w_dq, node.name + "_w_int")]
            if b is not None:  # a float (1, N) row: see gemm_bias_as_row (a DequantizeLinear's is misread too)
                inputs.append(const(node.name + "_b_int", b.reshape(1, -1)))
            gemm = helper.make_node("Gemm", inputs, [node.output[0] + "_acc"], name=node.name,
                                    transB=int(attrs.get("transB", 0)))
            nodes.append(gemm)
            y = qparams(quant, "")
            requantize(gemm.output[0], np.broadcast_to(multiplier(x, w_scale, y), (n_out,)).reshape(1, -1), quant)
        elif kind == "Add":
            a, b_act = act_input(node.input[0]), act_input(node.input[1])
            quant = output_quant(node)
            c = qparams(quant, quant.output[0] + "_int")
            if not (a.lo == b_act.lo == c.lo and a.hi == b_act.hi == c.hi):
                raise NotApplicable(f"{node.name}: mixed uint8/int8 inputs")
            table = add_table(a, b_act, c)
            base = quant.output[0]
            # index = (qa - lo) * 256 + (qb - lo), from the centred codes (exact integers in float32)
            offset = (a.zero_point - a.lo) * 256 + (b_act.zero_point - b_act.lo)
            shifted = op("Mul", [a.name, const(base + "_256", np.array(256, np.float32))], base + "_a256")
            summed = op("Add", [shifted, b_act.name], base + "_ab")
            index = op("Add", [summed, const(base + "_offset", np.array(offset, np.float32))], base + "_index")
            index64 = op("Cast", [index], base + "_index64", to=onnx.TensorProto.INT64)
            looked_up = op("Gather", [const(base + "_table", table.astype(np.float32)), index64],
                           base + "_looked_up", axis=0)
            # OpenCV's Gather returns a 1-D table's values with an extra axis (a 5-D activation
            # that its next Conv crashes on): Reshape to the Add's own shape, batch left free.
            shape = shapes.get(node.output[0])
            if shape is None or not all(shape[1:]):
                raise NotApplicable(f"{node.name}: shape unknown")
            op("Reshape", [looked_up, const(base + "_shape", np.array([-1, *shape[1:]], np.int64))], c.name)
            acts[quant.output[0]] = c
        elif kind == "GlobalAveragePool":
            x = act_input(node.input[0])
            height, width = (shapes.get(node.input[0]) or [None] * 4)[2:4]
            if height is None or width is None:
                raise NotApplicable(f"{node.name}: spatial size unknown")
            size = height * width
            quant = output_quant(node)
            y = qparams(quant, "")
            total = op("ReduceSum", [x.name, const(node.name + "_axes", np.array([2, 3], np.int64))],
                       node.output[0] + "_sum", keepdims=1)
            # ONNX Runtime's QLinearGlobalAveragePool: x_scale / (y_scale * image_size), in float32.
            pool_scale = np.float32(x.scale) / (np.float32(y.scale) * np.float32(size))
            requantize(total, np.array(pool_scale, np.float32), quant)
        elif kind in ("Flatten", "Reshape"):
            x = act_input(node.input[0])
            quant = output_quant(node)
            y = qparams(quant, quant.output[0] + "_int")
            if (y.scale, y.zero_point) != (x.scale, x.zero_point):
                raise NotApplicable(f"{node.name}: {kind} between different quantization parameters")
            moved = copy.deepcopy(node)
            moved.input[0] = x.name
            moved.output[0] = y.name
            nodes.append(moved)
            acts[quant.output[0]] = y
        else:
            raise NotApplicable(f"{node.name}: no integer emulation for {kind}")
    return _with_nodes(model, nodes, new_inits)


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Every tensor's shape as ONNX shape inference gives it (``None`` for an unknown dimension)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    return {vi.name: [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
            for vi in [*g.value_info, *g.input, *g.output]}


def note_rewrite(model: onnx.ModelProto, source: str, what: str, precision: str | None = None) -> None:
    """Record a rewrite in the fer-edge metadata's ``extra`` (everything else unchanged)."""
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            info = json.loads(prop.value)
            info.setdefault("extra", {})["portable_rewrite"] = {
                "what": what,
                "tool": "python -m export.portable",
                "source": source,
            }
            if precision:
                info["extra"]["portable_rewrite"]["precision_before"] = info["precision"]
                info["precision"] = precision
            prop.value = json.dumps(info, sort_keys=True)
            return


def check_parity(original: onnx.ModelProto, rewritten: onnx.ModelProto,
                 inputs: np.ndarray, optimize_rewritten: bool = True) -> tuple[float, float]:
    """Max |logit difference| and top-1 agreement of the two graphs on ``inputs`` (ONNX Runtime).

    Args:
        optimize_rewritten: ``False`` runs the rewritten graph op by op, without ONNX
            Runtime's graph fusions (for :func:`emulate_int8`: folding its ``Mul`` into the
            Conv weights reorders the float arithmetic it relies on).
    """
    import onnxruntime as ort

    from fer_edge.providers import session_options

    def run(model: onnx.ModelProto, optimize: bool = True) -> np.ndarray:
        opts = session_options(0)
        if not optimize:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        # Batches of mixed sizes, including 1: the rewrite must not depend on the batch.
        return np.concatenate([sess.run(None, {name: inputs[i:i + 64]})[0]
                               for i in range(0, len(inputs), 64)])

    a, b = run(original), run(rewritten, optimize_rewritten)
    return float(np.abs(a - b).max()), float(np.mean(a.argmax(1) == b.argmax(1)))


def _parity_inputs(model: onnx.ModelProto, data: Path | None) -> tuple[np.ndarray, str]:
    from fer_edge.metadata import ModelInfo

    info = ModelInfo.from_props({p.key: p.value for p in model.metadata_props})
    if data is not None:
        from export.evaluate import load_labelled

        images = load_labelled(data, "val", info.labels, info.preprocess)
        return images.inputs, f"{len(images)} val images"
    from export.evaluate import random_inputs

    return random_inputs(info.preprocess, 129, seed=0), "129 random images"


FLIP_NOTE = ("flip TTA unfolded from one batch Concat([x, flip(x)]) pass into two passes sharing "
             "the same weights (mirror by Gather), for runtimes without dynamic-batch Concat (OpenCV DNN)")
DEQUANT_NOTE = ("int8 QDQ dequantized to fp32: weights are the int8 weights in float, activation "
                "Q/DQ pairs replaced by Clip to their range (no rounding), for OpenCV DNN")
EMULATE_NOTE = ("int8 QDQ emulated exactly in float ops: integer codes as floats, integer weights and "
                "biases, ONNX Runtime's requantization multipliers and rounding, its QLinearAdd as a "
                "table; gives ONNX Runtime's int8 logits bit for bit in OpenCV DNN")
GEMM_ROW_NOTE = ("Gemm bias as a (1, N) row: OpenCV DNN adds a QDQ graph's 1-D Gemm bias to the "
                 "first image of a batch only")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.portable", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="exported fer-edge ONNX file")
    p.add_argument("--out", type=Path, required=True, help="where to write the rewritten model")
    p.add_argument("--data", type=Path, default=None,
                   help="image-folder root with val/<class>/: parity on every val image "
                        "(default: random images)")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--dequantize", action="store_true",
                      help="int8 QDQ model -> fp32 graph for OpenCV DNN (parity is reported, not "
                           "enforced: activation rounding is gone)")
    form.add_argument("--emulate-int8", action="store_true",
                      help="int8 QDQ model -> float graph that computes ONNX Runtime's int8 results "
                           "exactly (OpenCV DNN: the same logits bit for bit); parity enforced: "
                           "max diff 0 in ONNX Runtime without graph fusions")
    form.add_argument("--gemm-bias-row", action="store_true",
                      help="int8 QDQ model with only its Gemm bias given as a (1, N) row (OpenCV DNN "
                           "adds a 1-D one to the first image of a batch only); parity enforced")
    p.add_argument("--force", action="store_true", help="overwrite --out (may be the input itself)")
    a = p.parse_args(argv)
    if not a.model.is_file():
        print(f"error: {a.model}: no such file", file=sys.stderr)
        return 2
    if a.out.exists() and not a.force:
        print(f"error: {a.out} exists; add --force to overwrite it", file=sys.stderr)
        return 2
    original = onnx.load(str(a.model))
    int8_form = a.dequantize or a.emulate_int8 or a.gemm_bias_row
    try:
        rewritten = unfold_flip_tta(original)
        note = FLIP_NOTE
    except NotApplicable as exc:
        if not int8_form:
            print(f"{a.model}: nothing to do: {exc}")
            return 0
        rewritten, note = original, ""
    if int8_form:
        if not any(n.op_type == "QuantizeLinear" for n in rewritten.graph.node):
            print(f"error: {a.model}: no QuantizeLinear nodes; not an int8 QDQ model", file=sys.stderr)
            return 2
        rewrite, form_note = ((dequantize_qdq, DEQUANT_NOTE) if a.dequantize else
                              (emulate_int8, EMULATE_NOTE) if a.emulate_int8 else
                              (gemm_bias_as_row, GEMM_ROW_NOTE))
        try:
            rewritten = rewrite(rewritten)
        except NotApplicable as exc:
            print(f"error: {a.model}: {exc}", file=sys.stderr)
            return 2
        note = "; ".join(x for x in (note, form_note) if x)
    inputs, what = _parity_inputs(original, a.data)
    max_diff, agree = check_parity(original, rewritten, inputs, optimize_rewritten=not a.emulate_int8)
    print(f"parity vs original on {what} (ONNX Runtime CPU"
          + (", rewritten graph without graph fusions" if a.emulate_int8 else "")
          + f"): max |logit diff| {max_diff:.3g}, top-1 agreement {agree:.2%}")
    atol = 0.0 if a.emulate_int8 else PARITY_ATOL
    if not a.dequantize and (max_diff > atol or agree < 1.0):
        print(f"error: parity check failed (needs max diff <= {atol} and 100% top-1); "
              "nothing written", file=sys.stderr)
        return 1
    note_rewrite(rewritten, a.model.name, note, precision="fp32" if a.dequantize else None)
    onnx.save(rewritten, str(a.out))
    print(f"wrote {a.out} ({a.out.stat().st_size:,} bytes; {len(rewritten.graph.node)} nodes, "
          f"was {len(original.graph.node)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
