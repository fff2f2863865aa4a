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
from export.portable import NotApplicable, dequantize_qdq, unfold_flip_tta
from export.portable import main as portable_main
from fer_edge.blazeface import BlazeFace
from fer_edge.detector import FaceBox
from fer_edge.metadata import METADATA_KEY, ModelInfo

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


@pytest.fixture(scope="module")
def default_portable(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("portable") / "default-portable.onnx"
    onnx.save(unfold_flip_tta(onnx.load(str(MODELS / "default.onnx"))), str(out))
    return out


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


# --- OpenVINO -----------------------------------------------------------------

def _openvino():
    return pytest.importorskip("openvino", reason="OpenVINO not installed (pip install openvino): "
                                                  "OpenVINO checks skipped")


@pytest.mark.parametrize("name, atol, min_agree", [("default", 1e-4, 1.0), ("fast", 1.0, 0.98)])
def test_openvino_f32_runs_the_shipped_models_like_onnx_runtime(name, atol, min_agree):
    _openvino()
    path = MODELS / f"{name}.onnx"
    x, real = _inputs(path)
    reference = run_all(ort_predict(path, 2), x)
    diff, agree = _compare(reference, run_all(openvino_predict(path, 2, "f32"), x))
    # int8 kernels round differently from ONNX Runtime's; fp32 must agree to float noise.
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
