"""export.recover: a trainable checkpoint rebuilt from an exported file (BatchNorm folded back out)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from export import ExportConfig, export_checkpoint
from export.checkpoints import load_checkpoint_model
from export.recover import RecoverError, main, recover, sample_inputs
from export.recover import conv_bn_pairs as _pairs
from export.variants import QuantConfig
from fer_edge import Classifier
from fer_edge.errors import ModelError
from train.__main__ import main as train_main
from train.checkpoint import load
from train.config import TrainConfig
from train.model import load_checkpoint_backbone, model_for

CLASSES = ["happy", "neutral", "sad"]


@pytest.fixture(scope="module")
def data(ckpt_factory, tmp_path_factory) -> Path:
    return ckpt_factory.make_image_folder(tmp_path_factory.mktemp("data"), CLASSES, train_per_class=12)


def _model(ckpt: dict) -> nn.Module:
    model = model_for(TrainConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()


def _inputs(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, (n, 3, 32, 32)).astype(np.float32))


def test_fp32_file_gives_back_the_trained_network(ckpt_factory, data, tmp_path: Path) -> None:
    ckpt_path = ckpt_factory.make_checkpoint(tmp_path / "run" / "best.pt", CLASSES)
    onnx_path = tmp_path / "model.onnx"
    export_checkpoint(ExportConfig(checkpoint=ckpt_path, out=onnx_path, tta="flip", threads=1))
    ckpt, report = recover(onnx_path, data, n_images=30)
    assert report["top1_agreement_vs_file"] == 1.0 and report["max_logit_difference_vs_file"] < 1e-4
    # Giving each BatchNorm its statistics leaves the eval-mode network as it was.
    assert report["bn_restore_max_change"] < 1e-4
    original = load_checkpoint_model(ckpt_path).model
    x = _inputs()
    with torch.no_grad():
        np.testing.assert_allclose(_model(ckpt)(x).numpy(), original(x).numpy(), atol=1e-4)
    cfg = TrainConfig.from_dict(ckpt["config"])
    assert (cfg.arch, cfg.classes, cfg.input_size, cfg.drop_blocks) == ("b0", CLASSES, 32, [])
    assert ckpt["recovered_from"]["precision"] == "fp32"


def test_train_mode_batchnorm_starts_where_eval_mode_is(ckpt_factory, data, tmp_path: Path) -> None:
    """On the images the statistics came from, batch statistics equal the running ones."""
    ckpt_path = ckpt_factory.make_checkpoint(tmp_path / "run" / "best.pt", CLASSES, arch="lite0")
    onnx_path = tmp_path / "model.onnx"
    export_checkpoint(ExportConfig(checkpoint=ckpt_path, out=onnx_path, threads=1))
    ckpt, _ = recover(onnx_path, data, n_images=30, statistics="clean")
    model = _model(ckpt)
    x = torch.from_numpy(sample_inputs(data, Classifier(onnx_path), 30))
    with torch.no_grad():
        evaluated = model(x)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.train()
        trained = model(x)
    np.testing.assert_allclose(trained.numpy(), evaluated.numpy(), atol=1e-3)


def test_int8_file_gives_back_its_dequantized_weights(ckpt_factory, data, tmp_path: Path) -> None:
    ckpt_path = ckpt_factory.make_checkpoint(tmp_path / "run" / "best.pt", CLASSES, arch="lite0")
    onnx_path = tmp_path / "fast.onnx"
    export_checkpoint(ExportConfig(checkpoint=ckpt_path, out=onnx_path, data=data, precision="int8",
                                   calib_images=8, threads=1, quant=QuantConfig(format="qdq", scope="all")))
    ckpt, report = recover(onnx_path, data, n_images=30)
    assert ckpt["recovered_from"]["precision"] == "int8"
    assert report["bn_restore_max_change"] < 1e-4
    # Each recovered convolution weight is the trained one with its BatchNorm folded in, rounded
    # to per-channel symmetric int8: at most half a step (max |w| / 127 / 2) away, and not all equal.
    original = load_checkpoint_model(ckpt_path).model
    recovered = _model(ckpt)
    rounded = 0
    for (conv, bn), (mine, _) in zip(_pairs(original), _pairs(recovered)):
        w = conv.weight.detach()
        if bn is not None:
            w = w * (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().reshape(-1, 1, 1, 1)
        step = w.abs().amax(dim=(1, 2, 3), keepdim=True) / 127
        diff = (mine.weight.detach() - w).abs()
        assert bool((diff <= step / 2 + 1e-6).all())
        rounded += int((diff > 1e-7).sum())
    assert rounded > 0


def test_cli_writes_a_checkpoint_train_can_start_from(ckpt_factory, data, tmp_path: Path, capsys) -> None:
    ckpt_path = ckpt_factory.make_checkpoint(tmp_path / "run" / "best.pt", CLASSES)
    onnx_path = tmp_path / "model.onnx"
    export_checkpoint(ExportConfig(checkpoint=ckpt_path, out=onnx_path, threads=1))
    out = tmp_path / "recovered.pt"
    assert main([str(onnx_path), "--out", str(out), "--data", str(data), "--images", "30"]) == 0
    assert "same top-1 on 100.00%" in capsys.readouterr().out
    ckpt = load(out)
    student = model_for(TrainConfig(classes=CLASSES, input_size=32, weights="none"))
    load_checkpoint_backbone(student, out, CLASSES)  # what --weights does
    for k, v in student.state_dict().items():
        assert torch.equal(v, ckpt["model"][k]), k
    # ... and python -m train starts from it (normalisation read from the checkpoint).
    assert train_main(["--data", str(data), "--out", str(tmp_path / "ft"), "--weights", str(out),
                       "--input-size", "32", "--epochs", "1", "--batch-size", "12", "--threads", "1",
                       "--ema-decay", "0", "--patience", "0"]) == 0
    assert (tmp_path / "ft" / "best.pt").is_file()
    # Nothing is overwritten.
    assert main([str(onnx_path), "--out", str(out), "--data", str(data)]) == 2
    assert "exists" in capsys.readouterr().err


def test_bad_inputs_are_clear_errors(ckpt_factory, data, tmp_path: Path, capsys) -> None:
    ckpt_path = ckpt_factory.make_checkpoint(tmp_path / "run" / "best.pt", CLASSES)
    onnx_path = tmp_path / "model.onnx"
    export_checkpoint(ExportConfig(checkpoint=ckpt_path, out=onnx_path, threads=1))
    with pytest.raises(RecoverError, match="convolutions"):
        recover(onnx_path, data, n_images=30, arch="b0", drop_blocks=[6])
    with pytest.raises(RecoverError, match=r"no training images for the model.s labels: .*nowhere"):
        recover(onnx_path, tmp_path / "nowhere", n_images=30)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="broken.onnx"):
        recover(broken, data)
    assert main([str(broken), "--out", str(tmp_path / "x.pt"), "--data", str(data)]) == 2
    assert "broken.onnx" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()


def test_augmented_statistics_change_the_batchnorms_not_the_network(ckpt_factory, data, tmp_path: Path) -> None:
    ckpt_path = ckpt_factory.make_checkpoint(tmp_path / "run" / "best.pt", CLASSES, arch="lite0")
    onnx_path = tmp_path / "model.onnx"
    export_checkpoint(ExportConfig(checkpoint=ckpt_path, out=onnx_path, threads=1))
    clean, _ = recover(onnx_path, data, n_images=30, statistics="clean")
    augmented, report = recover(onnx_path, data, n_images=30)  # the default
    assert report["bn_restore_max_change"] < 1e-4 and report["max_logit_difference_vs_file"] < 1e-4
    assert augmented["recovered_from"]["statistics"] == "augmented"
    key = next(k for k in clean["model"] if k.endswith("running_var"))
    assert not torch.allclose(clean["model"][key], augmented["model"][key])
    with pytest.raises(RecoverError, match="not one of"):
        recover(onnx_path, data, n_images=30, statistics="noisy")
