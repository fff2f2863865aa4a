"""Recover a trainable checkpoint from an exported model, when its ``best.pt`` is gone.

Training runs live outside the work tree and do not always survive a machine;
the shipped ``.onnx`` files do (they are in git). This rebuilds, from such a
file, a checkpoint in ``best.pt``'s format that ``python -m train --weights``
(and ``python -m export``) takes, so a shipped model can be fine-tuned again.

The export folded each BatchNorm into the convolution before it, so the graph
holds one weight and one bias per convolution. Each is put back as the
convolution's weight, and the BatchNorm after it gets statistics that make it
an exact identity-plus-bias in eval mode *and* close to one in train mode:
one pass over training images (through training's augmentation, by default)
measures each channel's mean ``m`` and variance ``v`` of the convolution's
output, then ``running_mean = m``, ``running_var = v``, ``weight = sqrt(v +
eps)``, ``bias = m + folded bias``. Eval mode then computes ``y + folded
bias`` exactly; train mode normalises by the batch's own statistics, which are
close to ``m`` and ``v`` (training's batches are augmented too), so training
starts near where the file is instead of from a network whose every layer is
suddenly rescaled.

Weights may be stored as float32, as float16 (``--weights fp16``: a ``Cast``
widens them) or int8 (QDQ: ``DequantizeLinear``); the recovered weights are
then the dequantized ones, so an int8 file gives back its int8-rounded
weights. The check at the end compares the rebuilt PyTorch model with the
file on the given images (exact for float files up to float rounding; for an
int8 file, whose activations were quantized too, the top-1 agreement is the
figure that matters).

Usage::

    python -m export.recover fer_edge/models/fast.onnx --out runs/fast-recovered.pt \\
        --data ../shared/data/fer2013
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from fer_edge import Classifier
from fer_edge.errors import ModelError
from fer_edge.preprocess import normalize, preprocess_gray
from train.augment import augmented_inputs
from train.checkpoint import file_sha256, save_atomic
from train.config import TrainConfig
from train.data import DataLayoutError, list_split
from train.model import model_for

from .portable import dequantize_node

#: Where the BatchNorm statistics are measured (see :func:`recover`).
STATISTICS = ("clean", "augmented")
#: Ops whose output is a constant when every input is: how weights are stored.
_CONST_OPS = ("DequantizeLinear", "Cast", "Identity")


class RecoverError(ValueError):
    """The file cannot be turned back into a checkpoint (the message says why)."""


@dataclass
class FoldedLayer:
    """One convolution or linear layer of the graph, BatchNorm folded in."""

    name: str
    weight: np.ndarray
    bias: np.ndarray | None


def constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Every tensor of the graph whose value does not depend on the input.

    Initializers, and the outputs of ``DequantizeLinear``/``Cast``/``Identity``
    nodes fed only by constants (the graph is topologically sorted).
    """
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type not in _CONST_OPS or not all(i in values for i in node.input if i):
            continue
        x = values[node.input[0]]
        if node.op_type == "DequantizeLinear":
            values[node.output[0]] = dequantize_node(node, values.__getitem__)
        elif node.op_type == "Cast":
            values[node.output[0]] = x.astype(np.float32)
        else:
            values[node.output[0]] = x
    return values


def folded_layers(graph: onnx.GraphProto) -> tuple[list[FoldedLayer], FoldedLayer]:
    """The graph's convolutions in order (each once) and its final ``Gemm``.

    Raises:
        RecoverError: a weight is not a constant, or the head is not one Gemm.
    """
    values = constants(graph)
    convs: list[FoldedLayer] = []
    seen: set[str] = set()
    gemms: list[FoldedLayer] = []
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        w_name = node.input[1]
        if w_name not in values:
            raise RecoverError(f"{node.op_type} {node.name!r}: its weight {w_name!r} is computed, not stored")
        if w_name in seen:  # the same layer applied again (e.g. flip TTA as a second branch)
            continue
        seen.add(w_name)
        bias = values.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        weight = values[w_name]
        if node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            weight = weight if trans_b else weight.T
            gemms.append(FoldedLayer(node.name or w_name, weight, bias))
        else:
            convs.append(FoldedLayer(node.name or w_name, weight, bias))
    if len(gemms) != 1:
        raise RecoverError(f"expected one Gemm (the linear head), found {len(gemms)}")
    return convs, gemms[0]


def conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d | None]]:
    """Each Conv2d in execution order with the BatchNorm2d right after it in its block, if any."""
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d | None]] = []
    for module in model.modules():
        children = list(module.children())
        for i, child in enumerate(children):
            if isinstance(child, nn.Conv2d):
                after = children[i + 1] if i + 1 < len(children) else None
                pairs.append((child, after if isinstance(after, nn.BatchNorm2d) else None))
    return pairs


def load_folded(model: nn.Module, convs: list[FoldedLayer], head: FoldedLayer) -> None:
    """Put folded weights into ``model``; each BatchNorm becomes identity plus the folded bias.

    Raises:
        RecoverError: the layer counts or shapes differ (both named).
    """
    pairs = conv_bn_pairs(model)
    if len(pairs) != len(convs):
        raise RecoverError(f"the file has {len(convs)} convolutions, the model {len(pairs)}: "
                           "not this architecture (check --arch and --drop-blocks)")
    with torch.no_grad():
        for i, ((conv, bn), layer) in enumerate(zip(pairs, convs)):
            if tuple(conv.weight.shape) != layer.weight.shape:
                raise RecoverError(f"convolution {i} ({layer.name}): file {layer.weight.shape}, "
                                   f"model {tuple(conv.weight.shape)}")
            conv.weight.copy_(torch.from_numpy(layer.weight.copy()))
            bias = torch.from_numpy(layer.bias.copy()) if layer.bias is not None else torch.zeros(conv.out_channels)
            if bn is None:
                if conv.bias is None:
                    raise RecoverError(f"convolution {i} ({layer.name}) has a bias in the file, none in the model")
                conv.bias.copy_(bias)
                continue
            mean, var = bn.running_mean, bn.running_var
            assert mean is not None and var is not None  # BatchNorm2d tracks running statistics
            mean.zero_()
            var.fill_(1.0 - bn.eps)  # sqrt(var + eps) = 1: the identity
            bn.weight.fill_(1.0)
            bn.bias.copy_(bias)
        linear = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        if tuple(linear.weight.shape) != head.weight.shape:
            raise RecoverError(f"head: file {head.weight.shape}, model {tuple(linear.weight.shape)}")
        linear.weight.copy_(torch.from_numpy(np.array(head.weight)))
        if head.bias is not None:
            linear.bias.copy_(torch.from_numpy(head.bias.copy()))


@torch.no_grad()
def restore_bn_statistics(model: nn.Module, inputs: torch.Tensor, batch: int = 64) -> None:
    """Give each identity BatchNorm its input's statistics without changing eval outputs.

    See the module docstring: eval mode is unchanged exactly (up to float
    rounding); train mode then normalises by statistics close to these.
    """
    bns = [bn for _, bn in conv_bn_pairs(model) if bn is not None]
    # per channel: sum and sum of squares (float64), and the count per channel
    sums = {id(bn): torch.zeros(2, bn.num_features, dtype=torch.float64) for bn in bns}
    counts = {id(bn): 0 for bn in bns}

    def hook(bn: nn.Module, args: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        x = args[0].double()
        sums[id(bn)][0] += x.sum((0, 2, 3))
        sums[id(bn)][1] += (x * x).sum((0, 2, 3))
        counts[id(bn)] += x.numel() // x.shape[1]

    handles = [bn.register_forward_hook(hook) for bn in bns]
    model.eval()
    try:
        for i in range(0, len(inputs), batch):
            model(inputs[i:i + batch])
    finally:
        for h in handles:
            h.remove()
    for bn in bns:
        n = counts[id(bn)]
        mean = sums[id(bn)][0] / n
        var = (sums[id(bn)][1] / n - mean * mean).clamp_min(0.0)
        assert bn.running_mean is not None and bn.running_var is not None
        bn.running_mean.copy_(mean.float())
        bn.running_var.copy_(var.float())
        bn.bias.add_(mean.float())
        bn.weight.copy_(torch.sqrt(var + bn.eps).float())


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def config_from_info(clf: Classifier, arch: str | None, drop_blocks: list[int] | None) -> TrainConfig:
    """A training config for the file's network: labels, input and statistics from its metadata.

    The architecture is read from the metadata's model name (``efficientnet_lite0
    without the last block of stages 4, 5, 6``) unless given.

    Raises:
        RecoverError: the name is not one this repo exports (an ensemble, say).
    """
    info = clf.info
    name = info.model_name
    if arch is None:
        match = re.fullmatch(r"efficientnet_(b0|lite0)( without the last block of stages ([\d, ]+))?", name)
        if match is None:
            raise RecoverError(f"model {name!r} is not one EfficientNet this repo exports; "
                               "give --arch and --drop-blocks")
        arch = match.group(1)
        if drop_blocks is None:
            drop_blocks = [int(s) for s in match.group(3).split(",")] if match.group(3) else []
    return TrainConfig(classes=list(info.labels), input_size=info.preprocess.input_size, arch=arch,
                       drop_blocks=list(drop_blocks or []), weights="none",
                       mean=info.preprocess.mean, std=info.preprocess.std)


def sample_inputs(data: Path, clf: Classifier, n: int) -> np.ndarray:
    """``n`` training images (every k-th file name of each class, sorted), preprocessed as the runtime does."""
    try:
        items = list_split(data, "train", list(clf.labels))
    except DataLayoutError as exc:
        raise RecoverError(f"no training images for the model's labels: {exc}") from None
    per_class = max(1, n // len(clf.labels))
    files: list[Path] = []
    for index in range(len(clf.labels)):
        found = [path for path, label in items if label == index]
        step = max(1, len(found) // per_class)
        files += found[::step][:per_class]
    grays = np.stack([preprocess_gray(p, clf.spec.input_size) for p in files])
    return normalize(grays, clf.spec)


def recover(path: Path, data: Path, n_images: int = 1024, arch: str | None = None,
            drop_blocks: list[int] | None = None, statistics: str = "augmented") -> tuple[dict, dict]:
    """The checkpoint (``best.pt``'s format) and a report of how well it matches the file.

    ``statistics``: ``augmented`` (default) measures the BatchNorm statistics on
    the training images through training's augmentation (:func:`augmented_inputs`),
    ``clean`` on them as the runtime preprocesses them. Eval outputs are the same
    either way; a fine-tune of ``fast`` from the augmented kind did better at every
    epoch (README, "What was tried" for ``fast``).

    Raises:
        RecoverError: see :func:`folded_layers`, :func:`load_folded`, :func:`config_from_info`.
        fer_edge.errors.ModelError: the file is missing or not a fer-edge model.
    """
    clf = Classifier(path, providers="cpu")
    cfg = config_from_info(clf, arch, drop_blocks)
    convs, head = folded_layers(onnx.load(str(path)).graph)
    model = model_for(cfg)
    load_folded(model, convs, head)
    if statistics not in STATISTICS:
        raise RecoverError(f"statistics {statistics!r} is not one of {STATISTICS}")
    x = sample_inputs(data, clf, n_images)
    xt = torch.from_numpy(x)
    folded = _logits(model, xt)
    restore_bn_statistics(model, xt if statistics == "clean" else torch.from_numpy(augmented_inputs(x, clf.spec)))
    restored = _logits(model, xt)
    torch_logits = ((restored + _logits(model, xt.flip(-1))) / 2 if clf.info.tta == "flip" else restored).numpy()
    file_logits = np.concatenate([clf.logits(x[i:i + 64]) for i in range(0, len(x), 64)])
    report = {
        "images": len(x),
        "bn_restore_max_change": float((restored - folded).abs().max()),
        "max_logit_difference_vs_file": float(np.abs(torch_logits - file_logits).max()),
        "top1_agreement_vs_file": float((torch_logits.argmax(1) == file_logits.argmax(1)).mean()),
    }
    ckpt = {  # best.pt's layout (train.trainer), so --weights and export read it like one
        "model": model.state_dict(),
        "config": cfg.to_dict(),
        "classes": list(cfg.classes),
        "preprocess": clf.spec.to_dict(),
        "recovered_from": {"file": path.name, "sha256": file_sha256(path), "statistics": statistics,
                           "model_version": clf.info.model_version, "precision": clf.info.precision},
    }
    return ckpt, report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.recover", description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="an exported fer-edge .onnx file")
    p.add_argument("--out", type=Path, required=True, help="the checkpoint to write (must not exist)")
    p.add_argument("--data", type=Path, required=True, help="data root with train/<label>/ images")
    p.add_argument("--images", type=int, default=1024, help="training images for the BatchNorm statistics")
    p.add_argument("--arch", choices=("b0", "lite0"), default=None, help="default: from the file's metadata")
    p.add_argument("--drop-blocks", default=None, metavar="S,S,...", help="default: from the file's metadata")
    p.add_argument("--statistics", choices=STATISTICS, default="augmented",
                   help="measure the BatchNorm statistics on the images as the runtime sees them (clean) "
                        "or through training's augmentation (augmented); default %(default)s")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.out.exists():
        print(f"error: {args.out} exists; choose another --out", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    drop = [int(s) for s in args.drop_blocks.split(",") if s] if args.drop_blocks is not None else None
    try:
        ckpt, report = recover(args.model, args.data, args.images, args.arch, drop, args.statistics)
    except (RecoverError, ModelError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    save_atomic(ckpt, args.out)
    print(f"wrote {args.out} from {args.model} ({ckpt['recovered_from']['model_version']}, "
          f"{ckpt['recovered_from']['precision']}): against the file on {report['images']} training images, "
          f"same top-1 on {report['top1_agreement_vs_file']:.2%}, largest logit difference "
          f"{report['max_logit_difference_vs_file']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
