"""The shipped models in other ONNX runtimes (OpenCV DNN, OpenVINO) and export.portable.

Each runtime's tests skip, saying what to install, when its package is absent.
With the FER-2013 val data they compare with ONNX Runtime on real faces (a
class-balanced subset, to keep the 2-core CI short; benchmarks.runtimes_compat
does all of val), else on random images with looser agreement (noise gives
many near-ties).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from benchmarks.runtimes_compat import (
    RuntimeLoadError,
    fault_operator,
    opencv_predict,
    openvino_predict,
    ort_predict,
    run_all,
)
from export.portable import NotApplicable, dequantize_qdq, unfold_flip_tta
from export.portable import main as portable_main
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
