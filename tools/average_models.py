"""Val accuracy of models averaged three ways: weights ("soup"), logits (ensemble), views.

Answers "would averaging help?" before anything is exported:

* ``soup``: the uniform average of the weights of training checkpoints of
  one architecture (the EMA weights where a checkpoint holds them, as
  evaluation uses), every non-empty subset of the given checkpoints, each
  evaluated on val with flip TTA like the training log. ``--greedy``: the
  greedy soup of Wortsman et al. (2022) instead, 2n - 1 evaluations rather
  than 2^n - 1: members ranked by their own val accuracy, each added when the
  soup's accuracy does not fall. ``--tail``: stochastic weight averaging over
  the end of one run instead, n evaluations: the average of the last k
  checkpoints as given (oldest first; ``train --keep-epochs`` writes one per
  epoch), for k = 1 .. n. ``--mix A,A,...``: two checkpoints, a start and
  its fine-tune, interpolated: weights (1 - A) x the first + A x the second,
  for each A (WiSE-FT, Wortsman et al. 2022: the fine-tune's gain on new data
  with the start's accuracy on the old). ``--no-tta``: one pass per image
  instead of flip TTA (models that ship without it). Souping only makes sense
  for fine-tunes of one start (one loss basin); the chosen subset or weight is
  selected on val, like an epoch.
* ``ensemble``: the mean of the logits of checkpoints and/or exported ONNX
  files (each as it runs: a checkpoint with flip TTA, an ONNX file as its
  graph is), alone and together. Their labels must match, except that an
  ONNX file after the first model may have more: it is then scored on the
  first model's classes (its logits for them, on their val images: ``fer7``
  as a member beside ``default``). ``--subsets``: also every subset of two
  or more members (the best one is chosen on val, so it flatters itself).
  Each model after
  the first is also compared with the first, image by image: on how many
  val images the top-1 is the same, and the largest logit difference (does
  a re-export, e.g. with ``--weights fp16``, give the same answers?).
* ``views``: one checkpoint's logits averaged over test-time views of each
  image, beyond the flip TTA that ships: the image shifted by 1/24 of its
  side (2 px of FER-2013's 48) in each of four directions, and zoomed in by
  1/8, each with its mirror. Prints the view sets identity, flip (as shipped),
  flip + zoom, flip + shifts and all twelve.

``--save PATH`` writes the best average a ``soup`` run found as a checkpoint
in ``best.pt``'s format (its members' config and preprocessing, the averaged
weights, its val figures and the member files), which ``python -m export``
takes like any other. ``--size`` evaluates checkpoints at another input size
than they were trained at. Data: ``--data`` (default ``../shared/data/fer2013``).

Usage::

    python tools/average_models.py soup runs/b0-96-7cls-e14/best.pt runs/b0-96-7cls-e14/last.pt
    python tools/average_models.py soup runs/b0-96-7cls-e14/best.pt --size 112
    python tools/average_models.py soup --greedy runs/a/best.pt runs/b/best.pt runs/c/best.pt
    python tools/average_models.py soup --tail runs/a/epoch-00[6-9].pt runs/a/epoch-010.pt --save runs/a/swa.pt
    python tools/average_models.py soup --mix 0.25,0.5,0.75 --no-tta runs/start.pt runs/ft/best.pt
    python tools/average_models.py ensemble runs/b0-128-from7e20-s3/best.pt fer_edge/models/default.onnx
    python tools/average_models.py ensemble fer_edge/models/default.onnx fer_edge/models/fer7.onnx --subsets
    python tools/average_models.py views runs/b0-96-7cls-det-ft/best.pt

Measured with it (README, the model cards of ``default`` and ``fer7``): the
EMA weights of ``fer7``'s epochs 16 and 20 averaged: 69.32% (the same 2,488
images as either alone); at 112 px: 67.76%; ``b0-128-from7e20-s3`` and the
shipped ``default``, mean logits: 82.92% (82.55% and 82.78% alone); ``fer7``
over 10 and 12 views: 69.41% and 69.43% (69.38% with the shipped flip);
``default``'s fp32 file against the shipped one with fp16-stored weights: the
same top-1 on all 2,155 val images, largest logit difference 0.0083.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402  (after the path set-up)

from fer_edge import Classifier  # noqa: E402
from fer_edge.preprocess import normalize  # noqa: E402
from train import checkpoint  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.data import load_split  # noqa: E402
from train.model import model_for  # noqa: E402
from train.trainer import predict_logits, spec_of  # noqa: E402


def eval_weights(ckpt: dict) -> dict[str, torch.Tensor]:
    """The weights evaluation uses: the EMA copy when the checkpoint holds one (``last.pt``)."""
    return ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"]


def average(states: list[dict[str, torch.Tensor]],
            weights: list[float] | None = None) -> dict[str, torch.Tensor]:
    """Average of floating-point tensors (in float64); integer buffers from the last.

    Args:
        states: State dicts with the same keys and shapes.
        weights: One weight per state, summing to 1; ``None``: uniform.

    Example:
        >>> a, b = {"w": torch.tensor([1.0]), "n": torch.tensor(3)}, {"w": torch.tensor([2.0]), "n": torch.tensor(5)}
        >>> average([a, b])
        {'w': tensor([1.5000]), 'n': tensor(5)}
        >>> average([a, b], [0.75, 0.25])["w"]
        tensor([1.2500])
    """
    weights = weights or [1 / len(states)] * len(states)
    if len(weights) != len(states) or abs(sum(weights) - 1) > 1e-9:
        raise ValueError(f"average: {len(states)} states need as many weights summing to 1, got {weights}")
    out = {}
    for key in states[0]:
        values = [s[key] for s in states]
        if torch.is_floating_point(values[0]):
            total = torch.zeros_like(values[0], dtype=torch.float64)
            for v, w in zip(values, weights):
                total = total + w * v.double()
            out[key] = total.to(values[0].dtype)
        else:
            out[key] = values[-1]
    return out


def greedy_soup(ranked: list[int], score: Callable[[tuple[int, ...]], float]) -> tuple[tuple[int, ...], float]:
    """Greedy soup: start from the best member, add each next one if the score does not fall.

    Args:
        ranked: Member indices, best alone first.
        score: Val accuracy of the soup of a tuple of members (in the order added).

    Example:
        >>> scores = {(2,): 0.80, (2, 0): 0.82, (2, 0, 1): 0.81}
        >>> greedy_soup([2, 0, 1], lambda members: scores[members])
        ((2, 0), 0.82)
    """
    chosen: tuple[int, ...] = (ranked[0],)
    best = score(chosen)
    for i in ranked[1:]:
        trial = (*chosen, i)
        accuracy = score(trial)
        if accuracy >= best:
            chosen, best = trial, accuracy
    return chosen, best


def tails(n: int) -> list[tuple[int, ...]]:
    """The last k of n members, for k = 1 .. n: the averages ``--tail`` evaluates.

    Example:
        >>> tails(3)
        [(2,), (1, 2), (0, 1, 2)]
    """
    return [tuple(range(n - k, n)) for k in range(1, n + 1)]


def soup_checkpoint(ckpts: list[dict], members: list[Path], state: dict[str, torch.Tensor],
                    accuracy: float, n: int, tta: bool = True) -> dict:
    """An averaged set of weights as a checkpoint ``python -m export`` takes (best.pt's format)."""
    first = ckpts[0]
    meta = {k: first[k] for k in ("config", "classes", "preprocess") if k in first}
    return {**meta, "epoch": max(int(c.get("epoch") or 0) for c in ckpts) or None, "model": state,
            "val": {"accuracy": accuracy, "n": n, "tta": tta}, "soup": [str(m) for m in members]}


def eval_model(cfg: TrainConfig, state: dict) -> torch.nn.Module:
    """The network of ``cfg`` holding ``state``, ready for evaluation (channels-last, eval mode)."""
    model = model_for(cfg)
    model.load_state_dict(state)
    return model.to(memory_format=torch.channels_last).eval()


def checkpoint_logits(cfg: TrainConfig, state: dict, data: Path, size: int,
                      tta: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(val logits, labels) of one set of weights at input ``size``, with flip TTA unless ``tta`` is off."""
    model = eval_model(cfg, state)
    val = load_split(data, "val", cfg.classes, size)
    spec = dataclasses.replace(spec_of(cfg), input_size=size)
    with torch.no_grad():
        logits = predict_logits(model, normalize(val.images, spec), torch.device("cpu"), tta=tta)
    return logits, val.labels


def onnx_logits(path: Path, data: Path, threads: int,
                classes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(val logits of the graph as it is, labels, label names) of an exported model.

    ``classes``: score only the val images of these classes, and only their
    logits, in this order (a 7-class model as a 3-class one); they must all be
    among the model's labels. ``None``: the model's own labels.
    """
    clf = Classifier(path, threads=threads)
    names = list(classes) if classes is not None else clf.labels
    columns = restrict(clf.labels, names, path)
    val = load_split(data, "val", names, clf.spec.input_size)
    x = normalize(val.images, clf.spec)
    logits = np.concatenate([clf.logits(x[i:i + 64]) for i in range(0, len(x), 64)])  # bounded memory
    return logits[:, columns], val.labels, names


def restrict(labels: list[str], classes: list[str], source: Path | str) -> list[int]:
    """Positions of ``classes`` among a model's ``labels``, for scoring it on fewer classes.

    Taking a subset of the logits is the model's prediction restricted to those
    classes: the softmax over them is the model's probabilities renormalised.

    Example:
        >>> restrict(["angry", "happy", "neutral", "sad"], ["happy", "neutral", "sad"], "fer7.onnx")
        [1, 2, 3]
        >>> restrict(["happy", "neutral", "sad"], ["angry", "happy"], "default.onnx")
        Traceback (most recent call last):
        ...
        SystemExit: ensemble: default.onnx has no logit for angry (its labels: happy, neutral, sad)
    """
    missing = [c for c in classes if c not in labels]
    if missing:
        raise SystemExit(f"ensemble: {source} has no logit for {', '.join(missing)} "
                         f"(its labels: {', '.join(labels)})")
    return [labels.index(c) for c in classes]


def report(name: str, logits: np.ndarray, labels: np.ndarray) -> float:
    right = int((logits.argmax(1) == labels).sum())
    print(f"{name}: {right} of {len(labels)} right, {right / len(labels):.2%}", flush=True)
    return right / len(labels)


def agreement(first: np.ndarray, other: np.ndarray) -> str:
    """How far two models' val logits agree: same top-1 count, largest logit difference.

    Example:
        >>> a = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.5]])
        >>> agreement(a, a + np.array([[0.0, 0.1], [0.0, 0.0], [0.0, 0.6]]))
        'same top-1 on 2 of 3 (66.67%), largest logit difference 0.6000'
    """
    same = int((first.argmax(1) == other.argmax(1)).sum())
    return (f"same top-1 on {same} of {len(first)} ({same / len(first):.2%}), "
            f"largest logit difference {float(np.abs(first - other).max()):.4f}")


def mix_weights(text: str) -> list[float]:
    """``--mix``'s value: comma-separated weights of the second checkpoint, each in [0, 1].

    Example:
        >>> mix_weights("0.25,0.5")
        [0.25, 0.5]
    """
    try:
        alphas = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a comma-separated list of numbers") from None
    if any(not 0 <= a <= 1 for a in alphas):
        raise argparse.ArgumentTypeError(f"{text!r}: every weight must be in [0, 1]")
    return alphas


def mixes(alphas: list[float]) -> list[tuple[float, float]]:
    """Member weights ``(1 - a, a)`` of two checkpoints for each ``--mix`` value ``a``.

    Example:
        >>> mixes([0.25, 0.5])
        [(0.75, 0.25), (0.5, 0.5)]
    """
    if not alphas or any(not 0 <= a <= 1 for a in alphas):
        raise ValueError(f"--mix: every weight of the second checkpoint must be in [0, 1], got {alphas}")
    return [(1 - a, a) for a in alphas]


def cmd_soup(args: argparse.Namespace) -> None:
    ckpts = [checkpoint.load(p) for p in args.models]
    cfgs = [TrainConfig.from_dict(c["config"]) for c in ckpts]
    if len({(c.arch, tuple(c.classes), tuple(c.drop_blocks)) for c in cfgs}) != 1:
        raise SystemExit("soup: the checkpoints differ in architecture or classes; weights cannot be averaged")
    if args.mix is not None and len(ckpts) != 2:
        raise SystemExit(f"soup --mix: interpolates between exactly 2 checkpoints, got {len(ckpts)}")
    size = args.size or cfgs[0].input_size
    if args.save and size != cfgs[0].input_size:
        raise SystemExit("soup: --save keeps the trained input size; leave out --size")
    views = "flip TTA" if args.tta else "one pass"
    n_val = 0

    def state_of(subset: tuple[int, ...], weights: tuple[float, ...] | None = None) -> dict[str, torch.Tensor]:
        return average([eval_weights(ckpts[i]) for i in subset], list(weights) if weights else None)

    def score(subset: tuple[int, ...], weights: tuple[float, ...] | None = None) -> float:
        nonlocal n_val
        logits, labels = checkpoint_logits(cfgs[0], state_of(subset, weights), args.data, size, args.tta)
        n_val = len(labels)
        names = " + ".join(f"{w:g} x " * bool(weights) + f"{args.models[i]} (epoch {ckpts[i].get('epoch')})"
                           for i, w in zip(subset, weights or [1.0] * len(subset)))
        return report(f"{names} at {size} px, {views}", logits, labels)

    weights: tuple[float, ...] | None = None
    chosen: tuple[int, ...]
    if args.mix is not None:
        results_mix = {w: score((0, 1), w) for w in mixes(args.mix)}
        weights = max(results_mix, key=lambda w: results_mix[w])
        chosen, best = (0, 1), results_mix[weights]
        print(f"best mix: {weights[1]:g} of {args.models[1]}: {best:.2%}")
    elif args.greedy:
        alone = [score((i,)) for i in range(len(ckpts))]
        ranked = sorted(range(len(ckpts)), key=lambda i: -alone[i])
        chosen, best = greedy_soup(ranked, lambda s: alone[s[0]] if len(s) == 1 else score(s))
        print(f"greedy soup: {' + '.join(str(args.models[i]) for i in chosen)}: {best:.2%}")
    else:
        subsets = tails(len(ckpts)) if args.tail else [
            subset for r in range(1, len(ckpts) + 1) for subset in itertools.combinations(range(len(ckpts)), r)]
        results = {subset: score(subset) for subset in subsets}
        chosen = max(results, key=lambda s: (results[s], -len(s)))  # on a tie, the fewer members
        best = results[chosen]
        if args.tail:
            print(f"best tail: the last {len(chosen)} of {len(ckpts)}: {best:.2%}")
    if args.save:
        members = [args.models[i] for i in chosen]
        saved = soup_checkpoint([ckpts[i] for i in chosen], members, state_of(chosen, weights), best, n_val,
                                args.tta)
        if weights:
            saved["soup_weights"] = list(weights)
        checkpoint.save_atomic(saved, args.save)
        print(f"saved the average of {len(chosen)} ({best:.2%}) as {args.save}")


def cmd_ensemble(args: argparse.Namespace) -> None:
    members: list[tuple[np.ndarray, np.ndarray]] = []
    labels_seen: list[str] | None = None
    for path in args.models:
        if path.suffix == ".onnx":
            # A model with more labels than the first (fer7 beside a 3-class model) is scored
            # on the first model's classes: its logits for them, on their val images.
            logits, labels, names = onnx_logits(path, args.data, args.threads, labels_seen)
        else:
            ckpt = checkpoint.load(path)
            cfg = TrainConfig.from_dict(ckpt["config"])
            logits, labels = checkpoint_logits(cfg, eval_weights(ckpt), args.data, args.size or cfg.input_size)
            names = list(cfg.classes)
        if labels_seen is not None and names != labels_seen:
            raise SystemExit(f"ensemble: {path} has labels {names}, the first model {labels_seen}")
        labels_seen = names
        report(str(path), logits, labels)
        if members and np.array_equal(labels, members[0][1]):
            # e.g. a re-export with fp16-stored weights against its fp32 file: same answers?
            print(f"  against {args.models[0]}: {agreement(members[0][0], logits)}", flush=True)
        members.append((logits, labels))
    if any(not np.array_equal(m[1], members[0][1]) for m in members):
        raise SystemExit("ensemble: the models read val in different orders")
    if args.subsets:
        scores = {}
        for r in range(2, len(members)):
            for subset in itertools.combinations(range(len(members)), r):
                name = " + ".join(args.models[i].name for i in subset)
                scores[subset] = report(f"mean logits of {name}", np.mean([members[i][0] for i in subset], axis=0),
                                        members[0][1])
        if scores:
            best = max(scores, key=lambda s: (scores[s], -len(s)))  # on a tie, the fewer members
            print(f"best subset (chosen on val): {' + '.join(args.models[i].name for i in best)}: "
                  f"{scores[best]:.2%}")
    report("mean logits of all", np.mean([m[0] for m in members], axis=0), members[0][1])


def shifted(images: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """(N, S, S) images moved right by ``dx`` and down by ``dy`` pixels, edges repeated.

    Example:
        >>> shifted(np.arange(9, dtype=np.uint8).reshape(1, 3, 3), 1, 0)[0].tolist()
        [[0, 0, 1], [3, 3, 4], [6, 6, 7]]
    """
    pad = max(abs(dx), abs(dy))
    size = images.shape[1]
    wide = np.pad(images, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    return wide[:, pad - dy:pad - dy + size, pad - dx:pad - dx + size]


def view_sets(names: list[str]) -> dict[str, list[str]]:
    """The view sets ``views`` reports, from the names of the views computed (``F``: mirrored)."""
    shifts = [n for n in names if n.startswith("shift")]
    return {"identity": ["identity"], "flip (shipped)": ["identity", "identityF"],
            "flip + zoom": ["identity", "identityF", "zoom", "zoomF"],
            "flip + 4 shifts": ["identity", "identityF", *shifts], "all": list(names)}


def cmd_views(args: argparse.Namespace) -> None:
    if len(args.models) != 1 or args.models[0].suffix == ".onnx":
        raise SystemExit("views: give one checkpoint (.pt)")
    ckpt = checkpoint.load(args.models[0])
    cfg = TrainConfig.from_dict(ckpt["config"])
    size = args.size or cfg.input_size
    model = eval_model(cfg, eval_weights(ckpt))
    spec = dataclasses.replace(spec_of(cfg), input_size=size)
    val = load_split(args.data, "val", cfg.classes, size)
    margin = size // 16  # zoom: decode 1/8 larger and keep the centre
    big = load_split(args.data, "val", cfg.classes, size + 2 * margin).images
    big = big[:, margin:margin + size, margin:margin + size]
    step = max(1, size // 24)
    images = {"identity": val.images, "zoom": big}
    images.update({f"shift{dx:+d},{dy:+d}": shifted(val.images, dx, dy)
                   for dx, dy in ((step, 0), (-step, 0), (0, step), (0, -step))})
    logits: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for name, imgs in images.items():
            for suffix, view in (("", imgs), ("F", imgs[:, :, ::-1])):
                logits[name + suffix] = predict_logits(model, normalize(np.ascontiguousarray(view), spec),
                                                       torch.device("cpu"), tta=False)
    for name, members in view_sets(list(logits)).items():
        report(f"{name} ({len(members)} views)", np.mean([logits[m] for m in members], axis=0), val.labels)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("command", choices=("soup", "ensemble", "views"))
    parser.add_argument("models", type=Path, nargs="+", help="checkpoints (.pt); ensemble: also .onnx files")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "fer2013")
    parser.add_argument("--size", type=int, default=0, help="checkpoints' input size; 0: as trained")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--greedy", action="store_true", help="soup: the greedy soup, not every subset")
    parser.add_argument("--save", type=Path, default=None, metavar="PATH",
                        help="soup: write the best average found as a checkpoint export/ takes")
    parser.add_argument("--subsets", action="store_true",
                        help="ensemble: also every subset of 2 or more members, and the best of them")
    parser.add_argument("--tail", action="store_true",
                        help="soup: average the last k checkpoints as given (SWA), k = 1 .. n, not every subset")
    parser.add_argument("--mix", type=mix_weights, default=None,
                        metavar="A,A,...", help="soup: two checkpoints, weights (1 - A) and A, for each A "
                        "(interpolation from a start to its fine-tune, as WiSE-FT)")
    parser.add_argument("--no-tta", dest="tta", action="store_false",
                        help="soup: evaluate one pass per image (as models exported without --tta run)")
    args = parser.parse_args(argv)
    if sum(map(bool, (args.greedy, args.tail, args.mix is not None))) > 1:
        parser.error("--greedy, --tail and --mix choose the averages different ways; give one")
    torch.set_num_threads(args.threads)
    {"soup": cmd_soup, "ensemble": cmd_ensemble, "views": cmd_views}[args.command](args)


if __name__ == "__main__":
    main()
