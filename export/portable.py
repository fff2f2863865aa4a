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

Usage (rerunnable; a graph without the pattern is reported and left alone)::

    python -m export.portable fer_edge/models/default.onnx --out fer_edge/models/default.onnx \\
        --force --data ../shared/data/fer2013

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
from typing import Sequence

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
            if (len(halves) == 2 and all(h is not None and h.op_type == "Slice" for h in halves)
                    and halves[0].input[0] == halves[1].input[0]):  # type: ignore[union-attr]
                h0, h1 = halves  # type: ignore[misc]
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

    OpenCV DNN fuses QDQ pairs into its own int8 layers, whose results differ
    from ONNX Runtime's by up to 4 logits (see README, "Other runtimes"). This
    gives such runtimes the same network in float instead:

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
            q = array(node.input[0]).astype(np.float64)
            scale = array(node.input[1]).astype(np.float64)
            zp = array(node.input[2]).astype(np.float64) if len(node.input) > 2 and node.input[2] else 0.0
            axis = _axis(node)
            if np.ndim(scale) == 1 and q.ndim > 1:  # per-channel: broadcast along ``axis``
                shape = [1] * q.ndim
                shape[axis if axis is not None else 1] = -1
                scale, zp = scale.reshape(shape), np.reshape(zp, shape) if np.ndim(zp) else zp
            # float32 as ORT computes it: (q - zp) * scale in single precision.
            value = ((q - zp).astype(np.float32) * scale.astype(np.float32)).astype(np.float32)
            new_inits.append(numpy_helper.from_array(value, node.output[0]))
        elif node.op_type == "QuantizeLinear":
            continue  # handled at its DequantizeLinear
        elif node.op_type == "DequantizeLinear" and producers.get(node.input[0], node).op_type == "QuantizeLinear":
            quant = producers[node.input[0]]
            scale = float(array(quant.input[1]))
            zp_init = inits[quant.input[2]]
            zp = float(numpy_helper.to_array(zp_init))
            info = np.iinfo(helper.tensor_dtype_to_np_dtype(zp_init.data_type))
            lo, hi = (info.min - zp) * scale, (info.max - zp) * scale
            lo_name, hi_name = node.output[0] + "_clip_min", node.output[0] + "_clip_max"
            new_inits += [numpy_helper.from_array(np.array(lo, np.float32), lo_name),
                          numpy_helper.from_array(np.array(hi, np.float32), hi_name)]
            nodes.append(helper.make_node("Clip", [quant.input[0], lo_name, hi_name], [node.output[0]],
                                          name=node.name + "_clip"))
        else:
            nodes.append(node)
    return _with_nodes(model, nodes, new_inits)


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
                 inputs: np.ndarray) -> tuple[float, float]:
    """Max |logit difference| and top-1 agreement of the two graphs on ``inputs`` (ONNX Runtime)."""
    import onnxruntime as ort

    def run(model: onnx.ModelProto) -> np.ndarray:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        # Batches of mixed sizes, including 1: the rewrite must not depend on the batch.
        return np.concatenate([sess.run(None, {name: inputs[i:i + 64]})[0]
                               for i in range(0, len(inputs), 64)])

    a, b = run(original), run(rewritten)
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.portable", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="exported fer-edge ONNX file")
    p.add_argument("--out", type=Path, required=True, help="where to write the rewritten model")
    p.add_argument("--data", type=Path, default=None,
                   help="image-folder root with val/<class>/: parity on every val image "
                        "(default: random images)")
    p.add_argument("--dequantize", action="store_true",
                   help="int8 QDQ model -> fp32 graph for OpenCV DNN (parity is reported, not "
                        "enforced: activation rounding is gone)")
    p.add_argument("--force", action="store_true", help="overwrite --out (may be the input itself)")
    a = p.parse_args(argv)
    if not a.model.is_file():
        print(f"error: {a.model}: no such file", file=sys.stderr)
        return 2
    if a.out.exists() and not a.force:
        print(f"error: {a.out} exists; add --force to overwrite it", file=sys.stderr)
        return 2
    original = onnx.load(str(a.model))
    try:
        rewritten = unfold_flip_tta(original)
        note = FLIP_NOTE
    except NotApplicable as exc:
        if not a.dequantize:
            print(f"{a.model}: nothing to do: {exc}")
            return 0
        rewritten, note = original, ""
    if a.dequantize:
        if not any(n.op_type == "QuantizeLinear" for n in rewritten.graph.node):
            print(f"error: {a.model}: no QuantizeLinear nodes; not an int8 QDQ model", file=sys.stderr)
            return 2
        rewritten = dequantize_qdq(rewritten)
        note = "; ".join(x for x in (note, DEQUANT_NOTE) if x)
    inputs, what = _parity_inputs(original, a.data)
    max_diff, agree = check_parity(original, rewritten, inputs)
    print(f"parity vs original on {what} (ONNX Runtime CPU): max |logit diff| {max_diff:.3g}, "
          f"top-1 agreement {agree:.2%}")
    if not a.dequantize and (max_diff > PARITY_ATOL or agree < 1.0):
        print(f"error: parity check failed (needs max diff <= {PARITY_ATOL} and 100% top-1); "
              "nothing written", file=sys.stderr)
        return 1
    note_rewrite(rewritten, a.model.name, note, precision="fp32" if a.dequantize else None)
    onnx.save(rewritten, str(a.out))
    print(f"wrote {a.out} ({a.out.stat().st_size:,} bytes; {len(rewritten.graph.node)} nodes, "
          f"was {len(original.graph.node)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
