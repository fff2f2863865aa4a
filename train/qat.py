"""Quantization-aware training of the weights: train on the int8 grid the model will be exported to.

``python -m export --precision int8`` quantizes every convolution and linear
weight per output channel, symmetrically, with ONNX Runtime's grids: integers
in [-127, 127] for 8-bit weights, [-64, 64] with ``--int8-reduce-range``
(7-bit weights, which ORT's fast int8 kernels on x86 CPUs without VNNI add
without saturating; see README, "int8 on x86 CPUs without VNNI"). With
``python -m train --qat-weight-bits 7`` (or 8) the network trains and is
evaluated with its weights rounded to that grid, gradients passing straight
through the rounding (Bengio et al., 2013), so the weights learn to live with it.

The rounding is applied to the weights as stored, before the export folds
each BatchNorm into its convolution. That is the same grid: folding scales
output channel ``c`` by one number, ``gamma_c / sigma_c``, and a per-channel
symmetric grid scales with it (see :func:`fake_quantize`'s example). Only the
weights are simulated: activations stay float, their 8-bit calibration is
the export's as before. Checkpoints keep the float weights (the rounding is
re-applied wherever they are evaluated), so they load and export like any other.

Without training: ``python -m train.qat CHECKPOINT --bits 7 --out rounded.pt``
rounds a trained checkpoint's weights to the grid once and then re-estimates
every BatchNorm's statistics on training images through training's
augmentation (:func:`recalibrate_batchnorm`). Rounding shifts and rescales
each channel's output a little; the new statistics undo that per channel
(bias and variance correction), and since they only rescale output channels
the folded weights stay on the grid. It prints val accuracy of the float,
rounded and recalibrated networks; ``python -m export rounded.pt --precision
int8 --int8-reduce-range`` then exports it (the checkpoint's config says
``qat_weight_bits``, so an export to another grid is warned about).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fer_edge.preprocess import normalize

from . import checkpoint
from .augment import augmented_inputs
from .config import QAT_BITS, TrainConfig
from .data import load_split
from .model import model_for

#: Weight bits -> the largest integer of ONNX Runtime's symmetric int8 weight grid
#: (``onnxruntime.quantization.quant_utils.get_qmin_qmax_for_qType``; 7 = reduce_range).
WEIGHT_QMAX = {8: 127, 7: 64}


def fake_quantize(weight: torch.Tensor, qmax: int) -> torch.Tensor:
    """``weight`` rounded per output channel to ``scale * k``, ``k`` in [-qmax, qmax]; straight-through gradient.

    The scale of channel ``c`` is ``max |weight[c]| / qmax``, ONNX Runtime's
    symmetric min-max choice, so each channel's largest weight lands on ``±qmax``.

    Example:
        >>> w = torch.tensor([[0.30, -0.11, 0.02], [1.0, 0.5, -0.26]])
        >>> fake_quantize(w, 64) * 64 / w.abs().amax(1, keepdim=True)  # integers
        tensor([[ 64., -23.,   4.],
                [ 64.,  32., -17.]])
        >>> bn = torch.tensor([[-2.5], [0.1]])  # folding a BatchNorm scales each output channel
        >>> torch.allclose(fake_quantize(w * bn, 64), fake_quantize(w, 64) * bn)
        True
        >>> w = w.clone().requires_grad_(True)
        >>> fake_quantize(w, 64).sum().backward()
        >>> w.grad  # straight through the rounding
        tensor([[1., 1., 1.],
                [1., 1., 1.]])
    """
    dims = tuple(range(1, weight.dim()))
    scale = weight.detach().abs().amax(dim=dims, keepdim=True).clamp_min(1e-12) / qmax
    rounded = torch.clamp(torch.round(weight / scale), -qmax, qmax) * scale
    return weight + (rounded - weight).detach()


def quantized_weight_names(model: nn.Module) -> list[str]:
    """The parameters ``python -m export --precision int8`` quantizes: every conv and linear weight."""
    return [f"{name}.weight" for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


class QuantizedWeights(nn.Module):
    """``model`` run with its conv and linear weights on the int8 grid of ``bits``-bit weights.

    The wrapped model's own parameters stay float and receive the gradients;
    its buffers (BatchNorm statistics) update as usual in training mode.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
        >>> _ = net(torch.zeros(1, 3, 5, 5))
        >>> q = QuantizedWeights(net, bits=7)
        >>> q.names
        ['0.weight', '2.weight']
        >>> x = torch.randn(2, 3, 5, 5)
        >>> bool((q(x) - net(x)).abs().max() > 0)  # rounded weights: a slightly different answer
        True
    """

    def __init__(self, model: nn.Module, bits: int):
        super().__init__()
        if bits not in WEIGHT_QMAX:
            raise ValueError(f"weight bits {bits}: must be one of {sorted(WEIGHT_QMAX)}")
        self.model = model
        self.qmax = WEIGHT_QMAX[bits]
        self.names = quantized_weight_names(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = dict(self.model.named_parameters())
        rounded = {name: fake_quantize(params[name], self.qmax) for name in self.names}
        return torch.func.functional_call(self.model, rounded, (x,))


def with_weight_bits(model: nn.Module, bits: int) -> nn.Module:
    """``model`` itself when ``bits`` is 0, else wrapped in :class:`QuantizedWeights`.

    Raises:
        ValueError: ``bits`` is not one of :data:`train.config.QAT_BITS` (the message lists them).
    """
    if bits not in QAT_BITS:
        raise ValueError(f"qat_weight_bits {bits}: must be one of {', '.join(map(str, QAT_BITS))} (0 = off)")
    return QuantizedWeights(model, bits) if bits else model


@torch.no_grad()
def round_weights(model: nn.Module, bits: int) -> int:
    """Put every conv and linear weight of ``model`` on the ``bits``-bit grid, in place; returns how many."""
    params = dict(model.named_parameters())
    names = quantized_weight_names(model)
    for name in names:
        params[name].copy_(fake_quantize(params[name], WEIGHT_QMAX[bits]))
    return len(names)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, inputs: torch.Tensor, batch: int = 256) -> None:
    """Re-estimate every BatchNorm's running mean and variance on ``inputs`` (their plain average).

    The BatchNorms normalise with batch statistics while the rest of the network
    stays in eval mode (no dropout or stochastic depth), as training measured them;
    their learned scale and shift are kept. Leaves ``model`` in eval mode.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)).eval()
        >>> x = torch.randn(64, 1, 4, 4) * 3 + 5
        >>> recalibrate_batchnorm(net, x, batch=16)
        >>> y = net[0](x)
        >>> torch.allclose(net[1].running_mean, y.mean((0, 2, 3)), atol=1e-4), net.training
        (True, False)
    """
    model.eval()
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches
        bn.train()
    try:
        for i in range(0, len(inputs), batch):
            model(inputs[i:i + batch])
    finally:
        for bn, momentum in zip(bns, saved):
            bn.momentum = momentum
        model.eval()


def _val_accuracy(model: nn.Module, x: np.ndarray, labels: np.ndarray) -> str:
    """Val accuracy in one pass and with flip TTA (a recovered checkpoint does not know which one ships)."""
    from .trainer import predict_logits

    acc = [float((predict_logits(model, x, torch.device("cpu"), tta).argmax(1) == labels).mean())
           for tta in (False, True)]
    return f"val {acc[0]:.2%} in one pass, {acc[1]:.2%} with flip TTA"


def round_checkpoint(path: Path, data: Path, bits: int, per_class: int = 700, seed: int = 0,
                     report: bool = True) -> dict:
    """A checkpoint (``best.pt``'s format) of ``path``'s weights on the ``bits``-bit grid, BatchNorms recalibrated.

    ``per_class`` training images of each class (the first in name order), each
    through training's augmentation once (seeded), give the statistics.
    ``report``: print val accuracy of the float, rounded and recalibrated networks.
    """
    from .trainer import spec_of

    if bits not in WEIGHT_QMAX:
        raise ValueError(f"--bits {bits}: must be one of {', '.join(map(str, sorted(WEIGHT_QMAX)))}")
    ckpt = checkpoint.load(path)
    cfg = TrainConfig.from_dict(ckpt["config"])
    model = model_for(cfg)
    model.load_state_dict(ckpt["model"])
    model.eval()
    spec = spec_of(cfg)
    train = load_split(data, "train", cfg.classes, cfg.input_size, per_class)
    x = torch.from_numpy(augmented_inputs(normalize(train.images, spec), spec, seed))
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))]  # every batch of every class
    steps: list[tuple[str, str]] = []
    if report:
        val = load_split(data, "val", cfg.classes, cfg.input_size)  # decoded once, scored three times
        val_x = normalize(val.images, spec)
        steps.append(("float", _val_accuracy(model, val_x, val.labels)))
    n = round_weights(model, bits)
    if report:
        steps.append((f"{n} weights on the {bits}-bit grid", _val_accuracy(model, val_x, val.labels)))
    recalibrate_batchnorm(model, x)
    if report:
        steps.append((f"+ BatchNorms recalibrated on {len(x)} augmented training images",
                      _val_accuracy(model, val_x, val.labels)))
        for what, acc in steps:
            print(f"{path}: {what}: {acc}", flush=True)
    config = dataclasses.replace(cfg, qat_weight_bits=bits)
    return {"config": config.to_dict(), "classes": list(cfg.classes), "preprocess": ckpt["preprocess"],
            "epoch": ckpt.get("epoch"), "model": model.state_dict(),
            "rounded_from": {"path": str(path), "sha256": checkpoint.file_sha256(path), "bits": bits,
                             "images": len(x), "seed": seed}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.qat", description=(
        "Round a checkpoint's weights to the int8 export's grid and recalibrate its BatchNorms "
        "(no training); the result is a checkpoint python -m export takes."))
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write (refused if it exists)")
    p.add_argument("--bits", type=int, choices=sorted(WEIGHT_QMAX), default=7,
                   help="7: export with --int8-reduce-range (default); 8: the default int8 export")
    p.add_argument("--data", type=Path, default=Path("../shared/data/fer2013"))
    p.add_argument("--images-per-class", type=int, default=700, help="training images per class (default 700)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    a = p.parse_args(argv)
    if a.out.exists():
        print(f"error: {a.out} exists; choose another --out", file=sys.stderr)
        return 2
    if a.threads:
        torch.set_num_threads(a.threads)
    from .data import DataLayoutError

    try:
        rounded = round_checkpoint(a.checkpoint, a.data, a.bits, a.images_per_class, a.seed)
    except (checkpoint.CheckpointError, DataLayoutError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    checkpoint.save_atomic(rounded, a.out)
    print(f"wrote {a.out}: export it with python -m export {a.out} --precision int8"
          + (" --int8-reduce-range" if a.bits == 7 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
