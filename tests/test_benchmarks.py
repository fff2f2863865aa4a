"""benchmarks/: the --quick path on a tiny exported model and generated images.

These keep the script working; they never assert speed targets (those are
reported as PASS/MISS by the benchmark itself).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.__main__ import main as bench_main
from benchmarks.config import BenchConfig
from benchmarks.latency import LatencyStats, TimingPlan, calls_per_round
from benchmarks.quant_sweep import main as sweep_main
from benchmarks.report import RuntimeResult, target_ort_vs_torch, target_preprocess, target_variant
from benchmarks.run import run_benchmarks
from export import ExportConfig, export_checkpoint
from export.evaluate import EvalResult
from tests.constants import LABELS3 as CLASSES3

STATUSES = {"PASS", "MISS", "N/A"}


@pytest.fixture(scope="module")
def tiny(ckpt_factory, tmp_path_factory) -> dict[str, Path]:
    """A 32 px checkpoint, its fp32 and fp16 exports, and a small image folder."""
    root = tmp_path_factory.mktemp("bench")
    data = ckpt_factory.make_image_folder(root / "data", CLASSES3)
    ckpt = ckpt_factory.make_checkpoint(root / "run" / "best.pt", CLASSES3)
    paths = {"data": data, "ckpt": ckpt}
    for precision in ("fp32", "fp16"):
        paths[precision] = root / f"{precision}.onnx"
        export_checkpoint(ExportConfig(checkpoint=ckpt, out=paths[precision], precision=precision, threads=1))
    return paths


def test_quick_run_prints_table_and_writes_json_and_chart(tiny, tmp_path, capsys):
    out = tmp_path / "bench"
    code = bench_main(["--data", str(tiny["data"]), "--checkpoint", str(tiny["ckpt"]), "--model",
                       str(tiny["fp32"]), str(tiny["fp16"]), "--out", str(out), "--quick", "--threads", "1"])
    assert code == 0
    text = capsys.readouterr().out
    for word in ("Format", "Size MB", "Accuracy", "Macro-F1", "ms/img b1", "ms/img b32", "FPS b32",
                 "PyTorch", "ONNX fp32", "ONNX fp16"):
        assert word in text
    report = json.loads((out / "benchmark.json").read_text())
    assert [r["name"] for r in report["runtimes"]] == ["PyTorch", "ONNX fp32", "ONNX fp16"]
    for r in report["runtimes"]:
        assert [s["batch"] for s in r["latency"]] == [1, 8, 32]
        assert all(s["median_ms"] > 0 and s["p99_ms"] >= s["median_ms"] for s in r["latency"])
        assert r["accuracy"]["n"] == 12 and r["threads"] == 1
        assert r["memory"]["peak_mb"] > 0, r["memory"]
    assert report["runtimes"][1]["top1_agreement_vs_torch"] == 1.0
    assert report["runtimes"][0]["speedup_vs_torch"]["1"] == 1.0
    assert {t["status"] for t in report["targets"]} <= STATUSES and len(report["targets"]) == 3
    assert report["machine"]["cpu"] and report["machine"]["versions"]["onnxruntime"]
    assert report["settings"]["threads"] == 1
    if report["cli"]:  # fer-edge CLI importable: cold start and folder run were timed
        cli = report["cli"][0]
        assert cli["cold_start_s"] > 0 and cli["folder_images"] == 12 and cli["preprocess_ms_per_image"] > 0
    else:
        assert any("not timed" in n for n in report["notes"])
    assert (out / "benchmark.png").read_bytes()[:4] == b"\x89PNG"


def test_checkpoint_alone_gets_an_fp32_export(tiny, tmp_path):
    cfg = BenchConfig(data=tiny["data"], checkpoint=tiny["ckpt"], out=tmp_path, quick=True, threads=1,
                      batches=(1, 2))
    report = run_benchmarks(cfg)
    assert (tmp_path / "models" / "fp32.onnx").is_file()
    assert [r.kind for r in report.runtimes] == ["torch", "onnx"]
    assert report.targets[1].status == "N/A"


def test_ensemble_is_benchmarked_against_the_same_members_in_pytorch(ckpt_factory, tiny, tmp_path):
    second = ckpt_factory.make_checkpoint(tmp_path / "second.pt", CLASSES3, seed=1)
    cfg = BenchConfig(data=tiny["data"], checkpoint=tiny["ckpt"], ensemble=[second], out=tmp_path / "b",
                      quick=True, threads=1, batches=(1, 2))
    report = run_benchmarks(cfg)
    torch_rt, onnx_rt = report.runtimes
    assert torch_rt.name == "PyTorch x2" and onnx_rt.name == "ONNX fp32"
    assert onnx_rt.top1_agreement_vs_torch == 1.0, report.notes
    assert not any("different checkpoint" in n for n in report.notes)
    assert torch_rt.memory.get("peak_mb", 0) > 0, torch_rt.memory
    # The single-checkpoint PyTorch model is a different model: flagged, not silently compared.
    single = run_benchmarks(BenchConfig(data=tiny["data"], checkpoint=tiny["ckpt"], out=tmp_path / "c",
                                        models=[Path(onnx_rt.path)], quick=True, threads=1, batches=(1,)))
    assert any("different checkpoint" in n for n in single.notes)


def test_models_of_different_trained_models_are_refused(ckpt_factory, tiny, tmp_path):
    other = ckpt_factory.make_checkpoint(tmp_path / "other.pt", ["angry", "happy"])
    onnx_other = tmp_path / "other.onnx"
    export_checkpoint(ExportConfig(checkpoint=other, out=onnx_other, threads=1))
    cfg = BenchConfig(data=tiny["data"], models=[tiny["fp32"], onnx_other], out=tmp_path / "b", quick=True)
    with pytest.raises(ValueError, match="not the same model"):
        run_benchmarks(cfg)


def test_shipped_models_run_rejects_bad_variant_arguments(tiny, tmp_path, capsys):
    # Without --model/--checkpoint the shipped models are benchmarked (benchmarks/zoo.py).
    assert bench_main(["--data", str(tiny["data"]), "--out", str(tmp_path), "--variant", "x.onnx"]) == 2
    assert "NAME=FILE" in capsys.readouterr().err
    assert bench_main(["--data", str(tiny["data"]), "--out", str(tmp_path),
                       "--variant", f"nosuchmodel={tmp_path / 'x.onnx'}"]) == 2
    assert "not shipped models" in capsys.readouterr().err


def test_bad_model_arguments_are_clear_errors_naming_the_file(tiny, tmp_path, capsys):
    args = ["--data", str(tiny["data"]), "--out", str(tmp_path / "b"), "--quick"]
    missing = tmp_path / "missing.onnx"
    assert bench_main([*args, "--model", str(missing)]) == 2
    assert f"{missing}: no such ONNX file" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a protobuf at all")
    assert bench_main([*args, "--model", str(corrupt)]) == 2
    assert f"{corrupt}: not a loadable ONNX model" in capsys.readouterr().err
    assert bench_main([*args, "--model", "nosuchmodel"]) == 2
    err = capsys.readouterr().err
    assert "'nosuchmodel' is not a shipped model" in err and "default" in err
    assert not (tmp_path / "b" / "benchmark.json").exists()


def test_a_shipped_model_is_named_like_everywhere_else(tiny, tmp_path, capsys):
    assert bench_main(["--data", str(tiny["data"]), "--out", str(tmp_path), "--quick",
                       "--model", "fast", "--batches", "1"]) == 0
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert report["runtimes"][0]["path"].endswith("fer_edge/models/fast.onnx")


def _result(name: str, kind: str, precision: str, ms_b1: float, ms_b32: float, acc: float) -> RuntimeResult:
    lat = [LatencyStats(b, 3, ms, ms, ms, 1000 / ms) for b, ms in ((1, ms_b1), (32, ms_b32))]
    return RuntimeResult(name, kind, precision, "none", "x", 1.0, 1, lat, EvalResult(acc, acc, 100))


def test_targets_pass_and_miss():
    torch_r = _result("PyTorch", "torch", "fp32", 30.0, 10.0, 0.80)
    fp32 = _result("ONNX fp32", "onnx", "fp32", 5.0, 3.0, 0.80)
    fast_but_lossy = _result("ONNX int8", "onnx", "int8", 3.0, 1.0, 0.75)
    slow_but_exact = _result("ONNX fp16", "onnx", "fp16", 9.0, 6.0, 0.80)
    assert target_ort_vs_torch([torch_r, fp32], 1).status == "PASS"
    assert target_ort_vs_torch([torch_r, slow_but_exact], 1).status == "N/A"
    assert target_variant([fp32, fast_but_lossy, slow_but_exact], 32).status == "MISS"
    good = _result("ONNX int8", "onnx", "int8", 3.0, 1.5, 0.795)
    assert target_variant([fp32, good], 32).status == "PASS"
    assert target_variant([fp32], 32).status == "N/A"
    assert target_preprocess([], "fer-edge classify not timed").status == "N/A"


def test_slow_runtimes_get_fewer_calls_per_round():
    plan = TimingPlan(rounds=5, min_iters=30, min_seconds=2.0, max_iters=2000)
    assert calls_per_round(0.001, plan) == 400  # 2 s / 5 rounds of 1 ms calls
    assert calls_per_round(1.0, plan) == 6  # min_iters decides for slow calls
    assert calls_per_round(1e-7, plan) == 400  # capped at max_iters / rounds


def test_interleaved_timing_gives_each_runtime_its_own_inputs():
    import numpy as np

    from benchmarks.latency import measure_interleaved
    from benchmarks.runtimes import Runtime

    seen: dict[str, set] = {"a": set(), "b": set()}

    def runtime(name: str) -> Runtime:
        def predict(x):
            seen[name].add(x.shape)
            return np.zeros((len(x), 3), np.float32)
        return Runtime(name, "onnx", "fp32", "none", Path(name), 0, 1, predict)

    plan = TimingPlan(warmup=1, rounds=2, min_iters=2, min_seconds=0.0)
    small, big = np.zeros((5, 3, 32, 32), np.float32), np.zeros((2, 3, 128, 128), np.float32)
    stats = measure_interleaved([runtime("a"), runtime("b")], [small, big], 4, plan)
    assert seen == {"a": {(4, 3, 32, 32)}, "b": {(4, 3, 128, 128)}} and len(stats) == 2
    with pytest.raises(ValueError, match="1 input arrays for 2 runtimes"):
        measure_interleaved([runtime("a"), runtime("b")], [small], 4, plan)


def test_speedup_compares_with_the_reference_timed_in_the_same_rounds():
    from benchmarks.zoo import ZooRow, fast_targets

    fast = ZooRow("fast", "fast (shipped, int8)", "onnx", "int8", 96, "none", "fast.onnx", 1.0,
                  val_accuracy=0.82, ms_per_image={1: 0.6, 32: 0.4}, reference_ms_per_image={32: 2.4})
    ref = ZooRow("reference", "B0 reference", "onnx", "fp32", 128, "none", "ref.onnx", 16.0,
                 ms_per_image={32: 1.6})  # the median over groups: a faster hour than fast's rounds
    speedup = next(t for t in fast_targets([fast, ref]) if "B0" in t["target"])
    assert speedup["value"] == pytest.approx(6.0) and speedup["status"] == "PASS"
    fast.reference_ms_per_image = None  # a zoo.json from before: the reference row's own time
    speedup = next(t for t in fast_targets([fast, ref]) if "B0" in t["target"])
    assert speedup["value"] == pytest.approx(4.0) and speedup["status"] == "MISS"


def test_targets_without_fasts_accuracy_are_not_applicable_not_a_crash():
    from benchmarks.zoo import ZooRow, fast_targets

    fast = ZooRow("fast", "fast (shipped, int8)", "onnx", "int8", 96, "none", "fast.onnx", 1.0,
                  ms_per_image={1: 0.6, 32: 0.4})  # timed, but not scored on val
    fp32 = ZooRow("fast", "fast variant fast-fp32.onnx (fp32)", "onnx", "fp32", 96, "none", "f.onnx", 4.0,
                  val_accuracy=0.82, ms_per_image={1: 0.9, 32: 0.6})
    drop = next(t for t in fast_targets([fast, fp32]) if "int8 within" in t["target"])
    assert drop["value"] is None and drop["status"] == "N/A"


def test_quant_sweep_runs_a_recipe(tiny, tmp_path, capsys):
    code = sweep_main([str(tiny["ckpt"]), "--data", str(tiny["data"]), "--out", str(tmp_path),
                       "--recipe", "qoperator/pointwise/minmax/per-channel/u8s8", "--calib-images", "8",
                       "--threads", "1", "--rounds", "1"])
    assert code == 0
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["recipe"] for r in sweep["rows"]] == ["fp32", "qoperator/pointwise/minmax/per-channel/u8s8"]
    assert "keep" in capsys.readouterr().out
