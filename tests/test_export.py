"""export/: checkpoint -> verified ONNX file with fer-edge metadata.

Tiny randomly initialised 32 px checkpoints and generated image folders keep
these fast on a CPU; nothing here needs the FER-2013 data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export import ExportConfig, ExportError, OutputExistsError, QuantConfig, export_checkpoint
from export.__main__ import main as export_main
from export.checkpoints import load_checkpoint_model, strip_softmax
from export.evaluate import stratified_sample
from export.variants import end_nodes, select_nodes, squeeze_excite_convs, squeeze_excite_nodes
from fer_edge import Classifier
from fer_edge.metadata import ModelInfo
from tests.constants import LABELS3 as CLASSES3
from tests.constants import LABELS7 as CLASSES7
from train.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def ckpt3(ckpt_factory, tmp_path_factory) -> Path:
    return ckpt_factory.make_checkpoint(tmp_path_factory.mktemp("ckpt3") / "best.pt", CLASSES3)


@pytest.fixture(scope="module")
def data3(ckpt_factory, tmp_path_factory) -> Path:
    return ckpt_factory.make_image_folder(tmp_path_factory.mktemp("data3"), CLASSES3)


@pytest.fixture(scope="module")
def fp32_export(ckpt3, data3, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp32") / "model.onnx"
    report = export_checkpoint(ExportConfig(checkpoint=ckpt3, out=out, data=data3, threads=1,
                                            model_version="test-1"))
    return out, report


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_graph_outputs_logits_with_dynamic_batch(fp32_export):
    out, _ = fp32_export
    graph = onnx.load(out)
    assert not {n.op_type for n in graph.graph.node} & {"Softmax", "LogSoftmax"}
    s = _session(out)
    assert [i.name for i in s.get_inputs()] == ["input"] and [o.name for o in s.get_outputs()] == ["logits"]
    for batch in (1, 5):
        y = s.run(None, {"input": np.zeros((batch, 3, 32, 32), np.float32)})[0]
        assert y.shape == (batch, 3)


def test_metadata_round_trips_into_fer_edge(fp32_export, ckpt3):
    out, report = fp32_export
    info = ModelInfo.from_props(_session(out).get_modelmeta().custom_metadata_map)
    assert info == report.info
    assert info.labels == CLASSES3
    assert info.preprocess.input_size == 32 and info.preprocess.mean == (0.5, 0.5, 0.5)
    assert (info.precision, info.tta, info.model_version) == ("fp32", "none", "test-1")
    assert info.model_name == "efficientnet_b0" and info.exporter_version and info.export_date
    # With data given, the stored figures are measured on the ONNX graph, not copied from the checkpoint.
    assert info.val_accuracy == pytest.approx(report.val["fp32"].accuracy)
    assert "onnx" in info.extra["val_source"]
    assert info.extra["checkpoint_sha256"] and info.extra["opset"] >= 17


def test_parity_with_pytorch(fp32_export, ckpt3):
    out, report = fp32_export
    assert all(p.passed for p in report.parity)
    assert report.parity[0].inputs == "val images"
    model = load_checkpoint_model(ckpt3).model
    x = np.random.default_rng(1).uniform(-1, 1, (6, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = _session(out).run(None, {"input": x})[0]
    assert np.abs(ref - got).max() <= 1e-4
    assert ref.std(axis=0).max() > 1e-3, "logits must depend on the input, or parity proves nothing"
    assert (ref.argmax(1) == got.argmax(1)).all()


def test_summary_names_nodes_size_and_parity(fp32_export):
    text = fp32_export[1].summary()
    assert "simplified" in text and "MB" in text and "parity OK" in text and "val fp32" in text


def test_flip_tta_averages_image_and_mirror(ckpt3, tmp_path):
    out = tmp_path / "tta.onnx"
    report = export_checkpoint(ExportConfig(checkpoint=ckpt3, out=out, tta="flip", threads=1))
    assert report.info.tta == "flip" and report.parity[0].inputs == "random inputs"
    model = load_checkpoint_model(ckpt3).model
    x = np.random.default_rng(2).uniform(-1, 1, (3, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        t = torch.from_numpy(x)
        ref = ((model(t) + model(t.flip(-1))) / 2).numpy()
    assert np.abs(_session(out).run(None, {"input": x})[0] - ref).max() <= 1e-4


def test_ensemble_graph_averages_members_logits(ckpt_factory, ckpt3, tmp_path, capsys):
    second = ckpt_factory.make_checkpoint(tmp_path / "run2" / "best.pt", CLASSES3, seed=1)
    out = tmp_path / "ens.onnx"
    code = export_main([str(ckpt3), str(second), "--out", str(out), "--tta", "flip", "--threads", "1"])
    assert code == 0, capsys.readouterr().err
    members = [load_checkpoint_model(p).model for p in (ckpt3, second)]
    x = np.random.default_rng(3).uniform(-1, 1, (4, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        t = torch.from_numpy(x)
        each = [((m(t) + m(t.flip(-1))) / 2).numpy() for m in members]
    got = _session(out).run(None, {"input": x})[0]
    assert np.abs(got - (each[0] + each[1]) / 2).max() <= 1e-4
    assert np.abs(each[0] - each[1]).max() > 1e-3  # the members differ, so the mean is a real check
    info = ModelInfo.from_props(_session(out).get_modelmeta().custom_metadata_map)
    facts = info.extra["ensemble"]
    assert [f["checkpoint"] for f in facts] == ["best.pt", "best.pt"] and len({f["sha256"] for f in facts}) == 2
    assert info.model_name.startswith("2 x ") and "+" in info.model_version


def test_ensemble_members_must_agree_on_classes_and_size(ckpt_factory, ckpt3, tmp_path):
    other = ckpt_factory.make_checkpoint(tmp_path / "other.pt", CLASSES7)
    with pytest.raises(CheckpointError, match="cannot join an ensemble"):
        export_checkpoint(ExportConfig(checkpoint=ckpt3, ensemble=(other,), out=tmp_path / "m.onnx"))
    bigger = ckpt_factory.make_checkpoint(tmp_path / "big.pt", CLASSES3, input_size=48)
    with pytest.raises(CheckpointError, match="preprocessing"):
        export_checkpoint(ExportConfig(checkpoint=ckpt3, ensemble=(bigger,), out=tmp_path / "m.onnx"))
    with pytest.raises(ValueError, match="given twice"):
        export_checkpoint(ExportConfig(checkpoint=ckpt3, ensemble=(ckpt3,), out=tmp_path / "m.onnx"))
    assert not (tmp_path / "m.onnx").exists()


def test_seven_class_model_loads_in_classifier(ckpt_factory, tmp_path):
    ckpt = ckpt_factory.make_checkpoint(tmp_path / "best.pt", CLASSES7, input_size=48)
    out = tmp_path / "seven.onnx"
    export_checkpoint(ExportConfig(checkpoint=ckpt, out=out, threads=1))
    clf = Classifier(out, providers="cpu")
    assert clf.labels == CLASSES7
    pred = clf.predict(np.full((48, 48), 128, np.uint8))
    assert list(pred.probabilities) == CLASSES7


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_variants_load_and_run(precision, ckpt3, data3, tmp_path):
    out = tmp_path / f"{precision}.onnx"
    report = export_checkpoint(ExportConfig(
        checkpoint=ckpt3, out=out, data=data3, precision=precision, calib_images=8, threads=1,
        quant=QuantConfig(calibrate_method="minmax")))
    info = ModelInfo.from_props(_session(out).get_modelmeta().custom_metadata_map)
    assert info.precision == precision
    assert set(report.val) == {"fp32", precision}
    assert report.parity[-1].what == f"onnx {precision} vs onnx fp32"
    assert set(report.speed_b32) == {"fp32", precision} and "batch-32" in report.summary()
    x = np.random.default_rng(0).uniform(-1, 1, (4, 3, 32, 32)).astype(np.float32)
    y = _session(out).run(None, {"input": x})[0]
    assert y.shape == (4, 3) and np.isfinite(y).all()
    ops = {n.op_type for n in onnx.load(out).graph.node}
    assert ("QLinearConv" in ops) if precision == "int8" else ("Cast" in ops)


def test_int8_needs_calibration_data(ckpt3, tmp_path):
    with pytest.raises(ValueError, match="calibration"):
        export_checkpoint(ExportConfig(checkpoint=ckpt3, out=tmp_path / "q.onnx", precision="int8"))


def test_bad_choices_list_the_valid_ones(ckpt3, tmp_path):
    with pytest.raises(ValueError, match="fp32"):
        export_checkpoint(ExportConfig(checkpoint=ckpt3, out=tmp_path / "m.onnx", precision="int4"))
    with pytest.raises(ValueError, match="17"):
        export_checkpoint(ExportConfig(checkpoint=ckpt3, out=tmp_path / "m.onnx", opset=11))
    with pytest.raises(ValueError, match="pointwise"):
        QuantConfig(scope="everything").validate()


def test_corrupted_checkpoint_fails_clearly(tmp_path, capsys):
    bad = tmp_path / "best.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="best.pt"):
        export_checkpoint(ExportConfig(checkpoint=bad, out=tmp_path / "m.onnx"))
    assert export_main([str(bad), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_checkpoint_not_fitting_its_config_fails_clearly(ckpt_factory, tmp_path):
    ckpt = ckpt_factory.make_checkpoint(tmp_path / "best.pt", CLASSES7, num_outputs=3)
    with pytest.raises(CheckpointError, match="do not fit"):
        export_checkpoint(ExportConfig(checkpoint=ckpt, out=tmp_path / "m.onnx"))


def test_out_is_not_overwritten_without_force(ckpt3, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="--force"):
        export_checkpoint(ExportConfig(checkpoint=ckpt3, out=out, threads=1))
    assert export_main([str(ckpt3), "--out", str(out), "--threads", "1"]) == 2
    assert "--force" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
    assert export_main([str(ckpt3), "--out", str(out), "--threads", "1", "--force"]) == 0
    assert "parity OK" in capsys.readouterr().out
    assert ModelInfo.from_props(_session(out).get_modelmeta().custom_metadata_map).labels == CLASSES3
    assert not list(tmp_path.glob("*.tmp"))


def test_failed_parity_writes_nothing(ckpt3, tmp_path, monkeypatch):
    import export.onnx_export as ox

    real = ox.torch_logits
    monkeypatch.setattr(ox, "torch_logits", lambda model, x: real(model, x) + 1e-2)
    out = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match="parity"):
        export_checkpoint(ExportConfig(checkpoint=ckpt3, out=out, threads=1))
    assert not out.exists() and not list(tmp_path.iterdir())


def test_strip_softmax_removes_trailing_softmax(ckpt3):
    model = load_checkpoint_model(ckpt3).model
    model.classifier.append(torch.nn.Softmax(dim=1))
    assert strip_softmax(model) == 1
    assert not isinstance(model.classifier[-1], torch.nn.Softmax)


def test_quantization_scopes_follow_b0_structure(fp32_export):
    graph = onnx.load(fp32_export[0])
    # B0: 1 stem + 16 depthwise + 32 squeeze-excitation + 32 pointwise (15 expand, 16 project, head).
    assert len(select_nodes(graph, "conv")) == 81
    assert len(squeeze_excite_convs(graph)) == 32
    assert len(select_nodes(graph, "pointwise")) == 32
    assert len(select_nodes(graph, "dense")) == 33
    se_nodes = squeeze_excite_nodes(graph)
    # Per SE block: 2 convs, the SiLU between them (Sigmoid, Mul) and the gate Sigmoid.
    assert len(se_nodes) == 16 * 5
    assert len(select_nodes(graph, "all-but-se")) == len(graph.graph.node) - 16 * 5
    ends = end_nodes(graph)
    assert {graph.graph.node[0].op_type} <= {"Conv"}
    assert {n.op_type for n in graph.graph.node if n.name in ends} == {"Conv", "Gemm"}
    assert len(select_nodes(graph, "pointwise", keep_ends_float=True)) == 32
    assert len(select_nodes(graph, "dense", keep_ends_float=True)) == 32


def test_quant_recipe_labels_round_trip():
    q = QuantConfig(format="qdq", scope="conv", calibrate_method="entropy", per_channel=False,
                    activation_type="s8", weight_type="s8", reduce_range=True, keep_ends_float=True)
    assert QuantConfig.from_label(q.label()) == q
    assert QuantConfig.from_label(QuantConfig().label()) == QuantConfig()
    with pytest.raises(ValueError, match="form"):
        QuantConfig.from_label("qdq/conv")


def test_stratified_sample_covers_every_class():
    labels = np.array([0] * 50 + [1] * 3 + [2] * 20)
    idx = stratified_sample(labels, 9, seed=0)
    assert len(set(idx)) == 9 and set(np.bincount(labels[idx])) == {3}


def test_written_model_is_readable_by_everyone(fp32_export):
    """mkstemp creates 0600 files; a model shipped in a wheel must not keep that."""
    from fer_edge.atomic import current_umask

    out, _report = fp32_export
    assert out.stat().st_mode & 0o777 == 0o666 & ~current_umask()


def test_parity_on_real_fer_images(ckpt3, fer_data, tmp_path):
    out = tmp_path / "real.onnx"
    report = export_checkpoint(ExportConfig(checkpoint=ckpt3, out=out, data=fer_data, threads=1,
                                            val_limit_per_class=4, parity_images=12))
    assert report.parity[0].inputs == "val images" and report.parity[0].n == 12
    assert all(p.passed for p in report.parity)
    assert report.val["fp32"].n == 12 and report.info.val_accuracy == report.val["fp32"].accuracy


# -- calibration (issue 13): one temperature per model, ECE before and after ------------


def _drawn_labels(rng: np.random.Generator, logits: np.ndarray) -> np.ndarray:
    """Labels drawn from softmax(logits): data for which ``logits`` are perfectly calibrated."""
    from fer_edge.classifier import softmax

    return (rng.random((len(logits), 1)) > softmax(logits).cumsum(axis=1)).sum(axis=1)


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_a_known_temperature(true_t):
    from export.calibrate import fit_temperature

    rng = np.random.default_rng(1)
    z = rng.normal(0.0, 2.0, (20000, 3))
    y = _drawn_labels(rng, z)
    # The model's logits are the calibrated ones times true_t: T = true_t undoes it.
    fitted = fit_temperature(z * true_t, y)
    assert fitted == pytest.approx(true_t, rel=0.05)
    assert fit_temperature(z * true_t, y) == fitted  # deterministic


def test_ece_is_small_for_calibrated_data_and_large_for_overconfident():
    from export.calibrate import ece
    from fer_edge.classifier import softmax

    rng = np.random.default_rng(2)
    z = rng.normal(0.0, 2.0, (20000, 3))
    y = _drawn_labels(rng, z)
    assert ece(softmax(z), y) < 0.015
    assert ece(softmax(3.0 * z), y) > 0.1
    # Always 90% sure, right 60% of the time: ECE 0.3.
    p = np.tile([0.9, 0.1], (10, 1))
    assert ece(p, np.array([0] * 6 + [1] * 4)) == pytest.approx(0.3)


def test_calibrate_reports_in_sample_and_cross_validated_figures():
    from export.calibrate import calibrate, halves

    rng = np.random.default_rng(3)
    z = rng.normal(0.0, 2.0, (3001, 3))
    y = _drawn_labels(rng, z)
    cal = calibrate(3.0 * z, y)
    assert cal.ece_after < cal.ece_before and cal.nll_after < cal.nll_before and cal.n == 3001
    assert cal.ece_cv_after < 0.05 and all(t == pytest.approx(3.0, rel=0.1) for t in cal.cv_temperatures)
    a, b = halves(y)
    assert not set(a) & set(b) and len(a) + len(b) == 3001 and abs(len(a) - len(b)) <= 1
    with pytest.raises(ValueError, match="labels"):
        calibrate(z, y + 5)


def test_export_with_data_fits_and_stores_the_temperature(fp32_export):
    out, report = fp32_export
    info = ModelInfo.from_props(_session(out).get_modelmeta().custom_metadata_map)
    cal = report.calibration
    assert cal is not None and info.temperature == cal.temperature > 0
    stored = info.extra["calibration"]
    assert stored["temperature"] == cal.temperature and stored["n"] == report.val["fp32"].n
    assert {"ece_before", "ece_after", "ece_cv_after", "bins", "data"} <= stored.keys()
    assert stored["data"].endswith(", val split") and "/" not in stored["data"]  # no local path
    assert "calibration temperature" in report.summary()
    assert Classifier(out).info.temperature == cal.temperature


def test_export_without_data_is_not_calibrated(ckpt3, tmp_path):
    report = export_checkpoint(ExportConfig(checkpoint=ckpt3, out=tmp_path / "m.onnx", threads=1))
    assert report.info.temperature == 1.0 and report.info.extra["calibration"] is None
    assert any("NOT calibrated" in w for w in report.warnings)


def test_calibrate_stamp_changes_only_the_metadata(fp32_export, data3, tmp_path, capsys):
    from export.calibrate import main as calibrate_main

    src, _ = fp32_export
    path = tmp_path / "copy.onnx"
    path.write_bytes(src.read_bytes())
    model = onnx.load(str(path))
    meta = json.loads(model.metadata_props[0].value)
    meta.pop("temperature", None)
    meta["extra"].pop("calibration")
    model.metadata_props[0].value = json.dumps(meta)  # as if exported before calibration
    onnx.save(model, str(path))
    graph = onnx.load(str(path)).graph.SerializeToString()
    assert Classifier(path).info.temperature == 1.0

    assert calibrate_main([str(path), "--data", str(data3), "--threads", "1"]) == 0
    assert "not written" in capsys.readouterr().out
    assert Classifier(path).info.temperature == 1.0  # without --write nothing changes

    assert calibrate_main([str(path), "--data", str(data3), "--threads", "1", "--write", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert onnx.load(str(path)).graph.SerializeToString() == graph
    info = Classifier(path).info
    assert info.temperature == printed["temperature"] and info.extra["calibration"]["ece_after"] == printed["ece_after"]
    assert info.labels == CLASSES3 and info.extra["checkpoint_sha256"]  # the rest of the metadata kept


@pytest.mark.parametrize("content", ["text", "no-metadata"])
def test_calibrate_stamp_refuses_files_that_are_not_fer_edge_models(content, data3, tmp_path, capsys,
                                                                  make_model):
    from export.calibrate import main as calibrate_main

    if content == "text":
        path = tmp_path / "notes.onnx"
        path.write_text("not a model")
    else:
        path = make_model(tmp_path, CLASSES3, metadata=False, name="plain.onnx")
    before = path.read_bytes()
    assert calibrate_main([str(path), "--data", str(data3), "--write"]) == 1
    err = capsys.readouterr().err
    assert path.name in err and ("no 'fer_edge' metadata" in err or "not a loadable ONNX model" in err)
    assert path.read_bytes() == before


def test_fp16_weights_halve_the_file_and_keep_fp32_compute(ckpt3, data3, tmp_path):
    plain, half = tmp_path / "fp32.onnx", tmp_path / "fp16w.onnx"
    export_checkpoint(ExportConfig(checkpoint=ckpt3, out=plain, data=data3, threads=1))
    report = export_checkpoint(ExportConfig(checkpoint=ckpt3, out=half, data=data3, weights="fp16", threads=1))
    info = ModelInfo.from_props(_session(half).get_modelmeta().custom_metadata_map)
    assert info.precision == "fp32" and info.extra["weights_storage"] == "fp16"
    assert set(report.val) == {"fp32", "fp32 (fp16 weights)"} and "fp16 weights" in report.summary()
    assert report.parity[-1].what == "onnx fp32 (fp16 weights) vs onnx fp32"
    graph = onnx.load(half).graph
    weights = [i for i in graph.initializer if len(i.dims) >= 2]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
    assert all(i.data_type == onnx.TensorProto.FLOAT for i in graph.initializer if len(i.dims) < 2)
    assert half.stat().st_size < 0.6 * plain.stat().st_size
    x = np.random.default_rng(0).uniform(-1, 1, (4, 3, 32, 32)).astype(np.float32)
    a, b = _session(plain).run(None, {"input": x})[0], _session(half).run(None, {"input": x})[0]
    assert b.dtype == np.float32 and 0 < np.abs(a - b).max() < 1e-2


def test_fp16_weights_only_for_fp32(ckpt3, tmp_path):
    with pytest.raises(ValueError, match="fp16 weights are for the fp32 precision"):
        export_checkpoint(ExportConfig(checkpoint=ckpt3, out=tmp_path / "m.onnx", precision="fp16", weights="fp16"))
    with pytest.raises(ValueError, match=r"\('fp32', 'fp16'\)"):
        export_checkpoint(ExportConfig(checkpoint=ckpt3, out=tmp_path / "m.onnx", weights="bf16"))


@pytest.mark.parametrize("qat_bits,precision,reduce_range,expected", [
    (7, "int8", True, None),
    (8, "int8", False, None),
    (0, "int8", True, None),
    (7, "int8", False, "exported as 8-bit int8 weights: export with --precision int8 --int8-reduce-range"),
    (8, "int8", True, "exported as 7-bit int8 weights: export with --precision int8 without --int8-reduce-range"),
    (7, "fp32", False, "exported as fp32: export with --precision int8 --int8-reduce-range"),
])
def test_a_qat_checkpoint_exported_to_another_weight_grid_is_warned(qat_bits, precision, reduce_range, expected):
    from export.onnx_export import _check_weight_grid

    cfg = ExportConfig(checkpoint=Path("best.pt"), out=Path("m.onnx"), precision=precision,
                       quant=QuantConfig(reduce_range=reduce_range))
    warnings: list[str] = []
    _check_weight_grid(cfg, qat_bits, warnings)
    if expected is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warnings[0].endswith(expected), warnings
        assert f"trained for {qat_bits}-bit int8 weights (--qat-weight-bits {qat_bits})" in warnings[0]
