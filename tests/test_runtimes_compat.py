"""The shipped models and the face detector in other ONNX runtimes (OpenCV DNN,
OpenVINO), and export.portable.

Each runtime's tests skip, saying what to install, when its package is absent.
With the FER-2013 val data they compare with ONNX Runtime on real faces (a
class-balanced subset, to keep the 2-core CI short; benchmarks.runtimes_compat
does all of val), else on random images with looser agreement (noise gives
many near-ties). The face detector must find the same faces on photos/ in
each runtime, fed fer_edge's own input tensors and decoded by fer_edge.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest

from benchmarks.runtimes_compat import (
    DEFAULT_DETECTOR,
    SAME_FACE_IOU,
    DetectorRun,
    RuntimeBlazeFace,
    RuntimeLoadError,
    box_iou,
    detect_all,
    detector_images,
    faces_iou,
    fault_operator,
    measure_detector,
    opencv_detector,
    opencv_predict,
    openvino_detector,
    openvino_predict,
    ort_detector,
    ort_predict,
    run_all,
)
from export.portable import (
    EMULATED_SUFFIX,
    NotApplicable,
    dequantize_qdq,
    emulate_int8,
    gemm_bias_as_row,
    unfold_flip_tta,
)
from export.portable import main as portable_main
from fer_edge.blazeface import BlazeFace
from fer_edge.detector import FaceBox
from fer_edge.metadata import METADATA_KEY, ModelInfo
from fer_edge.providers import cpu_vnni_flags

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "fer_edge" / "models"
DATA = Path(os.environ.get("FER_EDGE_DATA", REPO.parent / "shared" / "data" / "fer2013"))
PER_CLASS = 40


def _inputs(path: Path) -> tuple[np.ndarray, bool]:
    """Val images of the model's classes if present (``True``), else random images (``False``)."""
    from export.evaluate import load_labelled, random_inputs

    info = ModelInfo.from_props({p.key: p.value for p in onnx.load(str(path)).metadata_props})
    if (DATA / "val").is_dir():
        return load_labelled(DATA, "val", info.labels, info.preprocess, PER_CLASS).inputs, True
    return random_inputs(info.preprocess, 48, seed=1), False


def _compare(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    return float(np.abs(reference - other).max()), float(np.mean(reference.argmax(1) == other.argmax(1)))


def _rewritten(tmp_path_factory, model: str, rewrite: Callable[[onnx.ModelProto], onnx.ModelProto]) -> Path:
    """A shipped model through one export.portable rewrite, saved in a fresh temporary folder."""
    out = tmp_path_factory.mktemp(rewrite.__name__) / f"{model}-{rewrite.__name__}.onnx"
    onnx.save(rewrite(onnx.load(str(MODELS / f"{model}.onnx"))), str(out))
    return out


@pytest.fixture(scope="module")
def default_portable(tmp_path_factory) -> Path:
    return _rewritten(tmp_path_factory, "default", unfold_flip_tta)


# --- export.portable (ONNX Runtime only: always runs) -------------------------

def test_unfolded_flip_tta_gives_the_same_logits_at_any_batch(default_portable):
    original, rewritten = ort_predict(MODELS / "default.onnx", 1), ort_predict(default_portable, 1)
    x = np.random.default_rng(0).uniform(-1, 1, (3, 3, 128, 128)).astype(np.float32)
    for batch in (x[:1], x):
        assert np.abs(original(batch) - rewritten(batch)).max() <= 1e-5
    graph = onnx.load(str(default_portable)).graph
    # No batch concatenation left; the mirror is a Gather; weights are shared, not copied.
    assert not any(n.op_type == "Concat" for n in graph.node)
    assert sum(n.op_type == "Gather" and n.input[0] == "input" for n in graph.node) == 1
    assert len(graph.initializer) <= len(onnx.load(str(MODELS / "default.onnx")).graph.initializer)


def test_rewrite_refuses_a_graph_without_flip_tta(default_portable):
    with pytest.raises(NotApplicable):
        unfold_flip_tta(onnx.load(str(default_portable)))
    with pytest.raises(NotApplicable):
        unfold_flip_tta(onnx.load(str(MODELS / "fast.onnx")))


def test_portable_command_keeps_metadata_and_notes_the_rewrite(tmp_path, capsys):
    out = tmp_path / "d.onnx"
    assert portable_main([str(MODELS / "default.onnx"), "--out", str(out)]) == 0
    before = json.loads({p.key: p.value for p in onnx.load(str(MODELS / "default.onnx")).metadata_props}[METADATA_KEY])
    after = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}[METADATA_KEY])
    assert after["extra"].pop("portable_rewrite")["tool"] == "python -m export.portable"
    assert after == before
    assert "max |logit diff| 0" in capsys.readouterr().out
    # Rerunnable: a second pass finds nothing to do and leaves the file alone.
    stamp = out.read_bytes()
    assert portable_main([str(out), "--out", str(out), "--force"]) == 0
    assert out.read_bytes() == stamp
    assert portable_main([str(MODELS / "default.onnx"), "--out", str(out)]) == 2  # exists, no --force


def test_dequantized_fast_model_follows_int8_in_onnx_runtime(tmp_path):
    out = tmp_path / "fast-fp32.onnx"
    onnx.save(dequantize_qdq(onnx.load(str(MODELS / "fast.onnx"))), str(out))
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in onnx.load(str(out)).graph.node)
    x, real = _inputs(MODELS / "fast.onnx")
    diff, agree = _compare(run_all(ort_predict(MODELS / "fast.onnx", 2), x), run_all(ort_predict(out, 2), x))
    assert diff < 1.0 and agree >= (0.98 if real else 0.9)


@pytest.fixture(scope="module")
def fast_emulated(tmp_path_factory) -> Path:
    return _rewritten(tmp_path_factory, "fast", emulate_int8)


@pytest.fixture(scope="module")
def fast_gemm_row(tmp_path_factory) -> Path:
    return _rewritten(tmp_path_factory, "fast", gemm_bias_as_row)


def test_emulated_int8_fast_model_gives_onnx_runtimes_int8_logits_exactly(fast_emulated):
    graph = onnx.load(str(fast_emulated)).graph
    # Float ops only: no activation is quantized any more; the only DequantizeLinear
    # nodes turn the kept int8/int32 constants into floats, with scale 1.
    assert not any(n.op_type in ("QuantizeLinear", "Round") for n in graph.node)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    dqs = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    assert dqs and all(n.input[0] in inits and np.all(inits[n.input[1]] == 1) for n in dqs)
    assert all(name.endswith(EMULATED_SUFFIX) for name in inits)
    x, _ = _inputs(MODELS / "fast.onnx")
    reference = run_all(ort_predict(MODELS / "fast.onnx", 2), x)
    # Bit for bit, at batch 64 (with a smaller last batch) and at batch 1.
    assert np.array_equal(run_all(ort_predict(fast_emulated, 2), x), reference)
    assert np.array_equal(run_all(ort_predict(fast_emulated, 2), x[:8], batch=1), reference[:8])


def test_gemm_bias_row_changes_nothing_in_onnx_runtime(fast_gemm_row):
    graph = onnx.load(str(fast_gemm_row)).graph
    gemm = next(n for n in graph.node if n.op_type == "Gemm")
    bias = next(i for i in graph.initializer if i.name == gemm.input[2])
    assert list(bias.dims) == [1, 3]
    x, _ = _inputs(MODELS / "fast.onnx")
    assert np.array_equal(run_all(ort_predict(fast_gemm_row, 2), x), run_all(ort_predict(MODELS / "fast.onnx", 2), x))


def test_int8_forms_refuse_a_float_model():
    default = onnx.load(str(MODELS / "default.onnx"))
    with pytest.raises(NotApplicable):
        emulate_int8(default)


def test_emulate_command_enforces_exact_parity_and_notes_it(tmp_path, capsys):
    out = tmp_path / "fast-int8emu.onnx"
    assert portable_main([str(MODELS / "fast.onnx"), "--out", str(out), "--emulate-int8"]) == 0
    assert "max |logit diff| 0," in capsys.readouterr().out
    info = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}[METADATA_KEY])
    assert "emulated exactly" in info["extra"]["portable_rewrite"]["what"]
    assert info["precision"] == "int8"  # the results are the int8 model's
    assert portable_main([str(MODELS / "default.onnx"), "--out", str(tmp_path / "d.onnx"), "--emulate-int8"]) == 2


def test_fault_operator_is_read_from_runtime_messages():
    assert fault_operator("Node [Concat@ai.onnx]:(onnx_node!/Concat) parse error") == "Concat"
    assert fault_operator("[Slice]:(onnx_node!/Slice): getMemoryShapes() failed") == "Slice"
    assert fault_operator("something else") is None


# --- OpenCV DNN ---------------------------------------------------------------

def _cv2():
    return pytest.importorskip("cv2", reason="OpenCV not installed (pip install opencv-python-headless): "
                                              "OpenCV DNN checks skipped")


def test_opencv_reports_the_shipped_default_models_concat_or_runs_it():
    _cv2()
    try:
        predict = opencv_predict(MODELS / "default.onnx", 2)
        x, _ = _inputs(MODELS / "default.onnx")
        run_all(predict, x[:4])
    except RuntimeLoadError as exc:
        # The documented exception (README): the dynamic-batch flip-TTA Concat.
        assert "operator Concat" in str(exc) and "default.onnx" in str(exc)


def test_opencv_runs_the_portable_default_model_like_onnx_runtime(default_portable):
    _cv2()
    x, _ = _inputs(MODELS / "default.onnx")
    reference = run_all(ort_predict(MODELS / "default.onnx", 2), x)
    diff, agree = _compare(reference, run_all(opencv_predict(default_portable, 2), x))
    assert diff <= 1e-4 and agree == 1.0


def test_opencv_runs_the_dequantized_fast_model_like_onnx_runtime(tmp_path):
    _cv2()
    out = tmp_path / "fast-fp32.onnx"
    onnx.save(dequantize_qdq(onnx.load(str(MODELS / "fast.onnx"))), str(out))
    x, real = _inputs(MODELS / "fast.onnx")
    reference = run_all(ort_predict(MODELS / "fast.onnx", 2), x)
    diff, agree = _compare(reference, run_all(opencv_predict(out, 2), x))
    assert diff < 1.0 and agree >= (0.98 if real else 0.9)


def test_opencv_runs_the_emulated_fast_model_exactly_like_onnx_runtime(fast_emulated):
    _cv2()
    x, _ = _inputs(MODELS / "fast.onnx")
    reference = run_all(ort_predict(MODELS / "fast.onnx", 2), x)
    predict = opencv_predict(fast_emulated, 2)
    # ONNX Runtime's int8 logits bit for bit (all 2,155 val images measured), at any batch.
    assert np.array_equal(run_all(predict, x), reference)
    assert np.array_equal(run_all(predict, x[:8], batch=1), reference[:8])


def test_opencv_int8_qdq_file_is_right_for_the_first_image_of_a_batch_only(fast_gemm_row):
    _cv2()
    x, real = _inputs(MODELS / "fast.onnx")
    shipped, fixed = opencv_predict(MODELS / "fast.onnx", 2), opencv_predict(fast_gemm_row, 2)
    # One image at a time the shipped QDQ file and its Gemm-bias-row form give the same
    # logits: OpenCV's only defect on it is the bias of images 2+ of a batch (garbage
    # memory, so what the shipped file gives there is not asserted).
    assert np.array_equal(run_all(shipped, x[:8], batch=1), run_all(fixed, x[:8], batch=1))
    batched = run_all(fixed, x)
    assert np.array_equal(batched[:8], run_all(fixed, x[:8], batch=1))
    # OpenCV's float Conv + Quantize rounds ~1e-5 of values otherwise than ONNX Runtime's
    # integer kernels (measured: 2150 of 2155 val images agree, max diff 0.185).
    diff, agree = _compare(run_all(ort_predict(MODELS / "fast.onnx", 2), x), batched)
    assert diff < 0.5 and agree >= (0.98 if real else 0.9)


# --- OpenVINO -----------------------------------------------------------------

def _openvino():
    return pytest.importorskip("openvino", reason="OpenVINO not installed (pip install openvino): "
                                                  "OpenVINO checks skipped")


@pytest.mark.parametrize("name, atol, min_agree", [
    ("default", 1e-4, 1.0), ("fast", 1.0, 0.98)])
def test_openvino_f32_runs_the_shipped_models_like_onnx_runtime(name, atol, min_agree):
    _openvino()
    path = MODELS / f"{name}.onnx"
    x, real = _inputs(path)
    reference = run_all(ort_predict(path, 2), x)
    diff, agree = _compare(reference, run_all(openvino_predict(path, 2, "f32"), x))
    # int8 kernels round differently from ONNX Runtime's; fp32 must agree to float noise.
    # fast's 7-bit weights keep OpenVINO's u8 x s8 pair sums inside int16 on every x86 CPU
    # (the 8-bit file before it saturated there without VNNI: 80.84% on an AVX2 EPYC).
    assert diff <= atol and agree >= (min_agree if real else min(min_agree, 0.9))


# --- the face detector (BlazeFace) --------------------------------------------

@pytest.fixture(scope="module")
def photo_faces() -> tuple[dict, dict, list]:
    """photos/, fer_edge's BlazeFace faces on them, and its model calls (ONNX Runtime)."""
    images = detector_images(samples=False)
    recorder = RuntimeBlazeFace(ort_detector(DEFAULT_DETECTOR, 2))
    return images, detect_all(recorder, images), recorder.calls


def _assert_same_faces(make: Callable[[], DetectorRun], photo_faces, score_atol: float | None,
                       box_atol: float | None) -> None:
    """The runtime's raw outputs, through fer_edge's decoding and NMS, give ONNX Runtime's faces."""
    images, want, reference = photo_faces
    detector = RuntimeBlazeFace(make())
    got = detect_all(detector, images)
    for name in images:
        iou = faces_iou(want[name], got[name])
        assert iou is not None and iou >= SAME_FACE_IOU, (name, want[name], got[name])
    assert len(detector.calls) == len(reference)
    for (x, regressors, scores), (x_ref, regressors_ref, scores_ref) in zip(detector.calls, reference):
        assert np.array_equal(x, x_ref)  # fer_edge's own preprocessing: the very same tensor
        if score_atol is not None:
            assert np.abs(scores - scores_ref).max() <= score_atol
        if box_atol is not None:
            assert np.abs(regressors - regressors_ref).max() <= box_atol


def test_detector_harness_changes_nothing_in_onnx_runtime(photo_faces):
    images, want, _ = photo_faces
    shipped = BlazeFace(providers="cpu", threads=2)
    assert {name: shipped.detect(image) for name, image in images.items()} == want
    # astronaut.jpg and camera.jpg have a face, chelsea.jpg none: there is something to compare.
    assert len(want["photos/astronaut.jpg"]) == len(want["photos/camera.jpg"]) == 1
    assert want["photos/chelsea.jpg"] == []


def test_faces_iou_pairs_faces_and_counts_them():
    a, b = FaceBox(0, 0, 100, 100), FaceBox(300, 0, 50, 50)
    assert faces_iou([a, b], [b, FaceBox(1, 0, 100, 100)]) == pytest.approx(99 / 101)
    assert faces_iou([a], [a, b]) is None
    assert faces_iou([], []) == 1.0
    assert box_iou(a, b) == 0.0


def test_a_detector_runtime_that_fails_gives_a_status_row(photo_faces):
    images, want, reference = photo_faces

    def fails() -> DetectorRun:
        raise RuntimeLoadError("Fake 1.0 cannot run blazeface_full_range.onnx (operator Resize): no")

    row = measure_detector("Fake 1.0", "shipped", fails, DEFAULT_DETECTOR, images, want, reference, 0.0)
    assert not row.loaded and "operator Resize" in row.error and row.same_faces is None


def test_opencv_runs_the_face_detector_like_onnx_runtime(photo_faces):
    _cv2()
    # Measured: 1.5e-5 (score logits) and 1.8e-4 (regressors, input pixels).
    _assert_same_faces(lambda: opencv_detector(DEFAULT_DETECTOR, 2), photo_faces, 1e-3, 1e-2)


@pytest.mark.parametrize("precision, score_atol, box_atol", [("f32", 1e-3, 1e-2), ("default", None, None)])
def test_openvino_runs_the_face_detector_like_onnx_runtime(photo_faces, precision, score_atol, box_atol):
    _openvino()
    # The default precision is bf16 on CPUs that have it (raw diffs ~0.6 logit, ~6 px
    # measured): only the faces must be the same there.
    _assert_same_faces(lambda: openvino_detector(DEFAULT_DETECTOR, 2, precision), photo_faces,
                       score_atol, box_atol)


def test_model_option_reruns_one_model_and_keeps_the_others(tmp_path):
    """--model fast: only fast's rows are new; default's and fer7's come from the file, in zoo order."""
    from benchmarks.runtimes_compat import main

    out = tmp_path / "compat.json"
    old = [{"model": "default", "runtime": "old"}, {"model": "fast", "runtime": "stale"},
           {"model": "fer7", "runtime": "old"}, {"model": "gone", "runtime": "old"}]
    out.write_text(json.dumps({"rows": old, "detector_rows": [{"kept": True}]}))
    assert main(["--only", "classifiers", "--model", "fast", "--seconds", "0.02", "--limit", "2",
                 "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    models = [r["model"] for r in rows]
    assert models[0] == "default" and models[-1] == "fer7" and "gone" not in models
    fast = [r for r in rows if r["model"] == "fast"]
    assert fast and all(r["runtime"] != "stale" for r in fast)
    assert json.loads(out.read_text())["detector_rows"] == [{"kept": True}]
    with pytest.raises(SystemExit) as exc:
        main(["--model", "nope", "--out", str(out)])
    assert exc.value.code == 2


# --- benchmarks.int8_kernels ----------------------------------------------------

def test_int8_kernels_benchmark_measures_both_sessions(fer_data, tmp_path, capsys):
    from benchmarks.int8_kernels import main as kernels_main

    out = tmp_path / "kernels.json"
    fast = MODELS / "fast.onnx"
    assert kernels_main([str(fast), "--data", str(fer_data), "--threads", "1", "--rounds", "1",
                         "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    info = ModelInfo.from_props({p.key: p.value for p in onnx.load(str(fast)).metadata_props})
    exact, default = doc["rows"]
    assert exact["kernels"] == "exact" and default["kernels"] == "ORT default"
    assert doc["fer_edge_uses"] == ("ORT default" if doc["vnni_flags"] else "exact")
    assert exact["accuracy"] == pytest.approx(info.val_accuracy, abs=1e-9)  # the card's figure, on any CPU
    assert doc["vnni_flags"] == list(cpu_vnni_flags() or ()) and doc["val_images"] == 2155
    if doc["vnni_flags"]:  # the option changes nothing where the kernels are exact already
        assert doc["top1_agreement"] == 1.0 and default["accuracy"] == exact["accuracy"]
    assert all(r["b1"]["median_ms"] > 0 and r["b32"]["batch"] == 32 for r in doc["rows"])
    assert "same top-1 on" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:  # a float model's kernels do not depend on the option
        kernels_main([str(MODELS / "default.onnx"), "--data", str(fer_data)])
    assert stop.value.code == 2
