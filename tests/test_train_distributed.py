"""``torchrun --nproc_per_node 2 -m train``: DistributedDataParallel on 2 CPU processes (Gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from tests.constants import REPO  # noqa: E402
from tests.test_train import CLASSES, _write_dataset  # noqa: E402
from train import checkpoint  # noqa: E402
from train.distributed import World, shard  # noqa: E402


def _torchrun(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "train", "--data", str(data), "--out", str(out), "--classes", ",".join(CLASSES),
            "--input-size", "32", "--weights", "none", "--batch-size", "3", "--threads", "1",
            "--patience", "0", "--device", "cpu", "--seed", "1", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def test_shards_cover_each_image_at_most_once() -> None:
    order = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    parts = [shard(order, World(rank=r, size=3)) for r in range(3)]
    assert [len(p) for p in parts] == [6, 6, 6]  # equal steps in every process
    seen = torch.cat(parts).tolist()
    assert len(set(seen)) == 18 and set(seen) <= set(order.tolist())
    assert shard(order, World()).tolist() == order.tolist()  # one process: unchanged


def test_torchrun_two_cpu_processes_train_and_resume(tmp_path: Path) -> None:
    data = _write_dataset(tmp_path / "data")
    out = tmp_path / "run"
    first = _torchrun(data, out, "--epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    # Only rank 0 logs and writes.
    assert first.stderr.count("epoch 1/1") == 1, first.stderr
    assert "2 processes (DistributedDataParallel, batch 3 each)" in first.stderr
    for name in ("last.pt", "best.pt", "metrics.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.tmp"))
    last = checkpoint.load(out / "last.pt")
    assert last["epoch"] == 1
    # 18 train images, 9 per process, batches of 3: 3 steps each.
    assert last["scheduler"]["last_epoch"] == 3

    resumed = _torchrun(data, out, "--resume", "--epochs", "2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stderr.count("resuming") == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["history"][0] == last["history"][0]  # epoch 1 kept, not re-run
    assert checkpoint.load(out / "last.pt")["epoch"] == 2
