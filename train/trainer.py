"""The training loop: fit, evaluate on val, checkpoint, resume, report."""

from __future__ import annotations

import json
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel

from fer_edge.preprocess import PreprocessSpec, normalize

from . import checkpoint, distributed
from .augment import AugmentConfig, augment, to_input
from .config import TEACHER_MODES, TrainConfig
from .data import class_weights, load_split
from .metrics import summarize
from .mix import Mixed, dominant_labels, mix_batch, mix_teacher_logits, mixed_loss
from .model import init_weights, model_for
from .qat import quantized_weight_names, with_weight_bits
from .teacher import Teacher, kd_loss, paired_sources


def pick_device(choice: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA GPU is available; use auto or cpu")
    if choice not in ("cpu", "cuda"):
        raise ValueError(f"--device {choice!r} is not one of ('auto', 'cpu', 'cuda')")
    return torch.device(choice)


def spec_of(cfg: TrainConfig) -> PreprocessSpec:
    """The preprocessing the runtime will apply for this model."""
    return PreprocessSpec(input_size=cfg.input_size, mean=cfg.mean, std=cfg.std)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


@torch.no_grad()
def predict_logits(
    model: nn.Module, inputs: np.ndarray, device: torch.device, tta: bool, batch_size: int = 256
) -> np.ndarray:
    """Logits for already-normalised float32 inputs (N, 3, S, S); flip-TTA averages two views."""
    model.eval()
    out = []
    for i in range(0, len(inputs), batch_size):
        x = torch.from_numpy(inputs[i : i + batch_size]).to(device)
        x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x).float()
        if tta:
            logits = (logits + model(x.flip(-1)).float()) / 2
        out.append(logits.cpu().numpy())
    return np.concatenate(out)


def ramped_ema(decay: float):
    """EMA update for :class:`torch.optim.swa_utils.AveragedModel`, with a warm-up.

    torch's own ``get_ema_multi_avg_fn`` uses a fixed decay; here the decay ramps
    up as ``min(decay, (1 + n) / (10 + n))`` over the first updates, so early
    epochs are not dominated by the random head of step 0 (kept from the
    original hand-written EMA, whose runs are in README).
    """

    @torch.no_grad()
    def update(ema: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        n = int(n_averaged)
        d = min(decay, (1 + n) / (10 + n))
        if torch.is_floating_point(ema[0]):
            torch._foreach_lerp_(ema, current, 1 - d)
        else:  # integer buffers (BatchNorm's num_batches_tracked): follow the model
            for e, c in zip(ema, current):
                e.copy_(c)

    return update


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of weights and BatchNorm statistics (``.module``: the model)."""
    ema = AveragedModel(model, multi_avg_fn=ramped_ema(decay), use_buffers=True)
    ema.eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


def _log(msg: str) -> None:
    # Under torchrun every process runs this code; one copy of each line is enough.
    if distributed.is_main_process():
        print(msg, file=sys.stderr, flush=True)


def _progress(iterable, total: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, file=sys.stderr,
                mininterval=5, disable=not sys.stderr.isatty())


class Trainer:
    """Holds data, model, optimiser and state for one run (fresh or resumed)."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, epochs: int | None = None,
                 keep_epochs: bool = False) -> None:
        """Set up a fresh run from ``cfg``, or continue ``cfg.out``/last.pt.

        Args:
            cfg: Run configuration (ignored when resuming, except ``out``).
            resume: Continue the run saved in ``<cfg.out>/last.pt``.
            epochs: When resuming, a new total number of epochs: the one-cycle
                schedule is re-planned from the current step to the new end.
            keep_epochs: When resuming, switch ``keep_epochs`` on from now on
                (a run started without it can still be averaged over its end).
        """
        self.out = Path(cfg.out)
        self.last_path = self.out / "last.pt"
        self.best_path = self.out / "best.pt"
        state = None
        if resume:
            state = checkpoint.load(self.last_path)
            saved_out = cfg.out
            cfg = TrainConfig.from_dict(state["config"])
            cfg.out = saved_out  # the folder may have been moved since
            if epochs is not None and epochs != cfg.epochs:
                if epochs <= int(state["epoch"]):
                    raise ValueError(f"--epochs {epochs} must exceed the {state['epoch']} epochs already run")
                _log(f"re-planning schedule: {cfg.epochs} -> {epochs} epochs")
                cfg.epochs = epochs
            if keep_epochs and not cfg.keep_epochs:
                cfg.keep_epochs = True
                _log(f"keeping each epoch's weights from epoch {int(state['epoch']) + 1} on")
            _log(f"resuming {self.last_path} after epoch {state['epoch']}")
        else:
            # A fresh run never writes over another run's checkpoints (a reused --out).
            taken = [p.name for p in (self.last_path, self.best_path) if p.exists()]
            if taken:
                raise ValueError(f"{self.out} already holds a run ({', '.join(taken)}): continue it with "
                                 "--resume, or choose another --out")
        self.cfg = cfg
        # Checked before the data is loaded: a bad value costs no decoding time.
        self.mix = cfg.mix_config()
        self.spec = spec_of(cfg)
        self.world = distributed.from_env()
        threads = distributed.cpu_threads(self.world, cfg.threads)
        if threads:
            torch.set_num_threads(threads)
        # The same seed in every process: the same initial weights and the same
        # epoch permutations, of which each process takes its own shard.
        seed_everything(cfg.seed, cfg.deterministic)
        self.device = distributed.setup(self.world, pick_device(cfg.device))
        self.amp = self.device.type == "cuda"

        root = Path(cfg.data)
        t0 = time.time()
        self.train_set = load_split(root, "train", cfg.classes, cfg.input_size, cfg.limit_per_class)
        self.val_set = load_split(root, "val", cfg.classes, cfg.input_size, cfg.limit_per_class)
        self.val_inputs = normalize(self.val_set.images, self.spec)
        _log(f"data: {len(self.train_set)} train / {len(self.val_set)} val images of "
             f"{cfg.classes} at {cfg.input_size}px, loaded in {time.time() - t0:.1f}s; "
             f"device {self.device}, {torch.get_num_threads()} CPU threads"
             + (f"; {self.world.size} processes (DistributedDataParallel, "
                f"batch {cfg.batch_size} each)" if self.world.distributed else ""))

        self.teacher, self.teacher_logits = self._load_teacher(cfg)
        if self.mix.enabled:
            _log(self._mix_description())
        self.model = model_for(cfg)
        if state is None:
            init_weights(self.model, cfg.weights, cfg.classes)
        if cfg.freeze_backbone:
            for p in self.model.get_submodule("features").parameters():
                p.requires_grad_(False)
        self.model.to(self.device).to(memory_format=torch.channels_last)
        # self.net trains (gradients averaged over the processes); self.model is
        # the same module unwrapped, for EMA, evaluation and checkpoints.
        # With --qat-weight-bits, self.net rounds the weights to the int8 export's grid (train.qat).
        self.net: nn.Module = with_weight_bits(self.model, cfg.qat_weight_bits)
        if cfg.qat_weight_bits:
            _log(f"quantization-aware training: {len(quantized_weight_names(self.model))} conv and linear "
                 f"weights on the {cfg.qat_weight_bits}-bit int8 grid, in training and evaluation")
        if self.world.distributed:
            self.net = DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None)

        w = class_weights(self.train_set.labels, len(cfg.classes), cfg.class_weighting)
        self.criterion = nn.CrossEntropyLoss(
            weight=torch.from_numpy(w).to(self.device), label_smoothing=cfg.label_smoothing
        )
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.steps_per_epoch = max(1, len(self.train_set) // self.world.size // cfg.batch_size)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * self.steps_per_epoch,
            pct_start=0.15, div_factor=20, final_div_factor=200,
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.ema = make_ema(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.aug = AugmentConfig()
        self.epoch = 0
        self.history: list[dict] = []
        self.best_acc = -1.0
        self.stale = 0
        if state is not None:
            self._restore(state)

    def _load_teacher(self, cfg: TrainConfig) -> tuple[Teacher | None, torch.Tensor | None]:
        """The distillation teacher, checked before any training (labels must match)."""
        if not cfg.teacher:
            return None, None
        if cfg.teacher_mode not in TEACHER_MODES:
            raise ValueError(f"teacher_mode {cfg.teacher_mode!r} is not one of {TEACHER_MODES}")
        teacher = Teacher(cfg.teacher, cfg.classes, threads=cfg.threads)
        if cfg.teacher_mode == "online":
            _log(f"distilling from {teacher} online (alpha {cfg.kd_alpha}, T {cfg.kd_temperature})")
            return teacher, None
        t0 = time.time()
        if not self.world.is_main:
            distributed.barrier()  # rank 0 computes and writes the cache; the others read it
        paths = list(self.train_set.paths)
        # paired: every crop's target is its bare image's, so only the bare images are run.
        sources = paired_sources(paths) if cfg.teacher_mode == "paired" else paths
        unique = list(dict.fromkeys(sources))
        logits = teacher.cached(unique, Path(cfg.data), self.out / "teacher-logits.npz")
        if self.world.is_main:
            distributed.barrier()
        row = {p: i for i, p in enumerate(unique)}
        logits = logits[[row[p] for p in sources]]
        agree = float((logits.argmax(1) == self.train_set.labels).mean())
        paired = (f", {len(paths) - len(unique)} crops paired with their bare image's logits"
                  if cfg.teacher_mode == "paired" else "")
        _log(f"distilling from {teacher}, {cfg.teacher_mode} ({time.time() - t0:.0f}s{paired}; teacher agrees "
             f"with {agree:.1%} of train labels; alpha {cfg.kd_alpha}, T {cfg.kd_temperature})")
        return teacher, torch.from_numpy(logits)

    def _mix_description(self) -> str:
        """One log line saying how batches are mixed (and how the cached teacher follows)."""
        m = self.mix
        methods = [f"{name} alpha {alpha}" for name, alpha in (("mixup", m.mixup), ("CutMix", m.cutmix)) if alpha]
        share = f", CutMix for {m.cutmix_share:.0%} of mixed batches" if m.mixup and m.cutmix else ""
        cached = "; cached teacher targets mixed with the same lambda" if self.teacher_logits is not None else ""
        return f"mixing {m.prob:.0%} of batches: {' or '.join(methods)}{share}{cached}"

    # ---- state -------------------------------------------------------------
    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        done = int(state["epoch"]) * self.steps_per_epoch
        if state["scheduler"]["total_steps"] == self.scheduler.total_steps:
            self.scheduler.load_state_dict(state["scheduler"])
        else:
            # New length: jump the freshly planned schedule to the current step.
            self.scheduler.last_epoch = done - 1
            with warnings.catch_warnings():  # "step() before optimizer.step()": intended here
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()
        if self.ema is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
            self.ema.n_averaged.fill_(int(state["ema_updates"]))
        self.gen.set_state(state["generator"])
        if state.get("torch_rng") is not None:
            torch.set_rng_state(state["torch_rng"])  # dropout draws from the global RNG
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.best_acc = float(state["best_acc"])
        self.stale = int(state["stale"])

    def _eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def _save(self, improved: bool, metrics: dict) -> None:
        meta = {"config": self.cfg.to_dict(), "classes": list(self.cfg.classes),
                "preprocess": self.spec.to_dict(), "epoch": self.epoch}
        checkpoint.save_atomic({
            **meta,
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "ema_updates": int(self.ema.n_averaged) if self.ema is not None else 0,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": self.history,
            "best_acc": self.best_acc,
            "stale": self.stale,
        }, self.last_path)
        # best.pt (and epoch-NNN.pt) hold only what export/ needs: the weights
        # that were evaluated.
        evaluated = {**meta, "model": self._eval_model().state_dict(), "val": metrics}
        if improved:
            checkpoint.save_atomic(evaluated, self.best_path)
        if self.cfg.keep_epochs:
            checkpoint.save_atomic(evaluated, self.out / f"epoch-{self.epoch:03d}.pt")

    # ---- loop --------------------------------------------------------------
    def train_epoch(self) -> tuple[float, float]:
        self.model.train()
        cfg, n = self.cfg, len(self.train_set)
        # The distributed sampler: one permutation (the same generator state in
        # every process), this process's shard of it. Augmentation draws from the
        # same generator, so its state stays equal everywhere and rank 0's
        # checkpoint resumes every process exactly.
        order = distributed.shard(torch.randperm(n, generator=self.gen), self.world)
        images = torch.from_numpy(self.train_set.images)
        labels = torch.from_numpy(self.train_set.labels)
        total_loss, correct, seen = 0.0, 0, 0
        batches = range(self.steps_per_epoch)
        for i in _progress(batches, self.steps_per_epoch, f"epoch {self.epoch + 1}"):
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            x01 = augment(images[idx].unsqueeze(1).float().div_(255.0), self.aug, self.gen)
            # Mixed after augmentation, in [0, 1]: the online teacher then sees the
            # mixed batch, and normalisation (affine) commutes with both methods.
            mixed = mix_batch(x01, self.mix, self.gen)
            x01 = mixed.x
            x = to_input(x01, self.spec)
            target = self._teacher_targets(idx, x01, mixed)
            x = x.to(self.device).contiguous(memory_format=torch.channels_last)
            y = labels[idx].to(self.device)
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
                logits = self.net(x)
                loss = mixed_loss(self.criterion, logits.float(), y, mixed)
                if target is not None:
                    loss = (1 - cfg.kd_alpha) * loss + cfg.kd_alpha * kd_loss(
                        logits, target, cfg.kd_temperature)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            total_loss += loss.item() * len(y)
            correct += int((logits.argmax(1) == dominant_labels(y, mixed)).sum())
            seen += len(y)
        # Over all processes' shards: the epoch's numbers, as with one process.
        # (all_sum returns floats: the counts summed as float64, exact for whole numbers.)
        loss_sum, correct_sum, seen_sum = distributed.all_sum([total_loss, correct, seen], self.device)
        return loss_sum / seen_sum, correct_sum / seen_sum

    def _teacher_targets(self, idx: torch.Tensor, x01: torch.Tensor, mixed: Mixed) -> torch.Tensor | None:
        """Teacher logits for the batch: online on the (mixed) images, or cached and mixed alike."""
        if self.teacher is None:
            return None
        if self.teacher_logits is not None:
            # Cached logits are of the clean images: mix their soft targets instead (train.mix).
            cached = mix_teacher_logits(self.teacher_logits[idx], mixed, self.cfg.kd_temperature)
            return cached.to(self.device)
        return self.teacher.logits_01(x01).to(self.device)

    def evaluate(self, model: nn.Module | None = None) -> tuple[dict, np.ndarray]:
        """Val metrics (and logits) of ``model`` (default: the EMA weights when enabled)."""
        model = with_weight_bits(model or self._eval_model(), self.cfg.qat_weight_bits)
        logits = predict_logits(model, self.val_inputs, self.device, self.cfg.tta)
        y = self.val_set.labels
        metrics = summarize(y, logits.argmax(1), self.cfg.classes)
        metrics["loss"] = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y)))
        metrics["tta"] = self.cfg.tta
        return metrics, logits

    def fit(self) -> dict:
        """Train until ``epochs`` or early stopping; return the best val metrics.

        Under torchrun, only rank 0 reports (the other processes return ``{}``).
        """
        cfg = self.cfg
        while self.epoch < cfg.epochs:
            t0 = time.time()
            train_loss, train_acc = self.train_epoch()
            self.epoch += 1
            metrics, _ = self.evaluate()
            improved = metrics["accuracy"] > self.best_acc
            if improved:
                self.best_acc, self.stale = metrics["accuracy"], 0
            else:
                self.stale += 1
            row = {"epoch": self.epoch, "train_loss": train_loss, "train_acc": train_acc,
                   "val_loss": metrics["loss"], "val_acc": metrics["accuracy"],
                   "val_macro_f1": metrics["macro_f1"], "lr": self.scheduler.get_last_lr()[0],
                   "seconds": time.time() - t0}
            self.history.append(row)
            # Every process evaluated the same replica on the same val set, so all
            # agree on `improved` and on early stopping without talking; rank 0 writes.
            if self.world.is_main:
                self._save(improved, metrics)
            # With mixing, train accuracy is against each image's dominant label (lam >= 0.5).
            acc_name = "acc (dominant label)" if self.mix.enabled else "acc"
            _log(f"epoch {self.epoch}/{cfg.epochs} train loss {train_loss:.4f} {acc_name} {train_acc:.4f} | "
                 f"val loss {metrics['loss']:.4f} acc {metrics['accuracy']:.4f} "
                 f"macro-F1 {metrics['macro_f1']:.4f}{' *' if improved else ''} | "
                 f"{row['seconds']:.0f}s")
            if cfg.patience and self.stale >= cfg.patience:
                _log(f"early stop: no val improvement for {cfg.patience} epochs")
                break
        if not self.world.is_main:
            return {}  # rank 0 reports; its best.pt is the run's
        return self.report()

    def report(self) -> dict:
        """Reload best.pt, evaluate it, write metrics.json and the PNG plots."""
        best = checkpoint.load(self.best_path)
        model = model_for(self.cfg)
        model.load_state_dict(best["model"])
        model.to(self.device).to(memory_format=torch.channels_last)
        metrics, _ = self.evaluate(model)
        tta = self.cfg.tta
        self.cfg.tta = not tta
        other, _ = self.evaluate(model)
        self.cfg.tta = tta
        result = {"val": metrics, "val_without_tta" if tta else "val_with_tta": other,
                  "best_epoch": best["epoch"], "epochs_run": self.epoch,
                  "config": self.cfg.to_dict(), "history": self.history}
        (self.out / "metrics.json").write_text(json.dumps(result, indent=2))
        try:
            from .plots import plot_confusion, plot_history

            plot_history(self.history, self.out / "curves.png")
            plot_confusion(metrics, self.out / "confusion.png")
        except ImportError as exc:
            _log(f"plots skipped: {exc} (pip install 'fer-edge[train]')")
        _log(f"best epoch {best['epoch']}: val acc {metrics['accuracy']:.4f} macro-F1 "
             f"{metrics['macro_f1']:.4f} (tta={tta}); other TTA setting: {other['accuracy']:.4f}")
        return result
