"""tools/: the model-averaging script's selection logic (the rest of it is run by hand on trained models)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")


def test_greedy_soup_adds_a_member_only_when_val_does_not_fall():
    from tools.average_models import greedy_soup

    asked = []

    def score(members: tuple[int, ...]) -> float:
        asked.append(members)
        return {(1,): 0.80, (1, 0): 0.80, (1, 0, 2): 0.79, (1, 0, 3): 0.83}[members]

    assert greedy_soup([1, 0, 2, 3], score) == ((1, 0, 3), 0.83)
    # A tie keeps the member (Wortsman et al.'s rule); the member that lowered val is never tried again.
    assert asked == [(1,), (1, 0), (1, 0, 2), (1, 0, 3)]


def test_average_weights_is_uniform_and_keeps_integer_buffers():
    import torch

    from tools.average_models import average

    out = average([{"w": torch.tensor([1.0, 3.0]), "n": torch.tensor(1)},
                   {"w": torch.tensor([2.0, 5.0]), "n": torch.tensor(7)},
                   {"w": torch.tensor([3.0, 7.0]), "n": torch.tensor(9)}])
    assert torch.equal(out["w"], torch.tensor([2.0, 5.0])) and int(out["n"]) == 9


def test_tail_averages_are_the_last_k_checkpoints_as_given():
    from tools.average_models import tails

    assert tails(1) == [(0,)]
    assert tails(4) == [(3,), (2, 3), (1, 2, 3), (0, 1, 2, 3)]


def test_greedy_and_tail_together_are_refused(capsys):
    from tools.average_models import main

    with pytest.raises(SystemExit) as exc:
        main(["soup", "--greedy", "--tail", "a.pt", "b.pt"])
    assert exc.value.code == 2 and "give one" in capsys.readouterr().err


def test_soup_save_writes_an_average_that_export_loads(ckpt_factory, tmp_path, capsys):
    import torch

    from export.checkpoints import load_checkpoint_model
    from tests.constants import LABELS3
    from tools.average_models import main

    data = ckpt_factory.make_image_folder(tmp_path / "data", LABELS3)
    a = ckpt_factory.make_checkpoint(tmp_path / "a" / "epoch-001.pt", LABELS3, seed=1)
    b = ckpt_factory.make_checkpoint(tmp_path / "b" / "epoch-002.pt", LABELS3, seed=2)
    out = tmp_path / "swa.pt"
    main(["soup", "--tail", str(a), str(b), "--data", str(data), "--threads", "1", "--save", str(out)])
    printed = capsys.readouterr().out
    assert "best tail: the last" in printed and f"as {out}" in printed
    saved = torch.load(out, weights_only=True)
    chosen = [torch.load(p, weights_only=True)["model"] for p in saved["soup"]]
    assert len(chosen) in (1, 2) and saved["soup"][-1] == str(b)  # a tail always ends with the last
    key = "classifier.1.weight"
    assert torch.allclose(saved["model"][key], sum(c[key] for c in chosen) / len(chosen))
    assert f"{saved['val']['accuracy']:.2%}" in printed.splitlines()[-2]
    loaded = load_checkpoint_model(out)  # export takes it like a trained checkpoint
    assert loaded.classes == list(LABELS3) and loaded.val["accuracy"] == saved["val"]["accuracy"]


def test_weighted_average_and_its_bad_weights():
    import torch

    from tools.average_models import average, mixes

    a, b = {"w": torch.tensor([0.0, 4.0])}, {"w": torch.tensor([4.0, 0.0])}
    assert torch.equal(average([a, b], [0.75, 0.25])["w"], torch.tensor([1.0, 3.0]))
    assert torch.equal(average([a, b], [1.0, 0.0])["w"], a["w"])
    with pytest.raises(ValueError, match="summing to 1"):
        average([a, b], [0.5, 0.6])
    assert mixes([0, 0.3]) == [(1, 0), (0.7, 0.3)]
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        mixes([1.5])


def test_soup_mix_interpolates_two_checkpoints_and_saves_the_best(ckpt_factory, tmp_path, capsys):
    import torch

    from tests.constants import LABELS3
    from tools.average_models import main

    data = ckpt_factory.make_image_folder(tmp_path / "data", LABELS3)
    a = ckpt_factory.make_checkpoint(tmp_path / "a.pt", LABELS3, seed=1)
    b = ckpt_factory.make_checkpoint(tmp_path / "b.pt", LABELS3, seed=2)
    out = tmp_path / "mix.pt"
    main(["soup", "--mix", "0,0.25,1", "--no-tta", str(a), str(b), "--data", str(data), "--threads", "1",
          "--save", str(out)])
    printed = capsys.readouterr().out
    assert printed.count("one pass") == 3 and "best mix:" in printed
    saved = torch.load(out, weights_only=True)
    first, second = saved["soup_weights"]
    key = "classifier.1.weight"
    wa, wb = (torch.load(p, weights_only=True)["model"][key] for p in (a, b))
    assert first + second == pytest.approx(1) and saved["val"]["tta"] is False
    assert torch.allclose(saved["model"][key], first * wa + second * wb)
    with pytest.raises(SystemExit, match="exactly 2 checkpoints"):
        main(["soup", "--mix", "0.5", str(a), "--data", str(data)])
    with pytest.raises(SystemExit) as exc:
        main(["soup", "--mix", "0.5", "--tail", str(a), str(b)])
    assert exc.value.code == 2
    for bad in ("half", "0.5,2"):
        with pytest.raises(SystemExit):
            main(["soup", "--mix", bad, str(a), str(b)])
        assert bad in capsys.readouterr().err


def test_views_scores_each_view_set_and_flip_matches_the_training_evaluation(ckpt_factory, tmp_path, capsys):
    from tests.constants import LABELS3
    from tools.average_models import checkpoint_logits, eval_weights, main
    from train import checkpoint
    from train.config import TrainConfig

    data = ckpt_factory.make_image_folder(tmp_path / "data", LABELS3)
    ckpt_path = ckpt_factory.make_checkpoint(tmp_path / "best.pt", LABELS3, seed=1)
    main(["views", str(ckpt_path), "--data", str(data), "--threads", "1"])
    lines = capsys.readouterr().out.splitlines()
    names = ["identity (1 views)", "flip (shipped) (2 views)", "flip + zoom (4 views)",
             "flip + 4 shifts (10 views)", "all (12 views)"]
    assert [line.split(":")[0] for line in lines] == names
    # The shipped view set is exactly what training's evaluation scores (flip TTA).
    ckpt = checkpoint.load(ckpt_path)
    cfg = TrainConfig.from_dict(ckpt["config"])
    logits, labels = checkpoint_logits(cfg, eval_weights(ckpt), data, cfg.input_size)
    right = int((logits.argmax(1) == labels).sum())
    assert f": {right} of {len(labels)} right" in lines[1]


def test_views_refuses_anything_but_one_checkpoint(capsys):
    from tools.average_models import main

    with pytest.raises(SystemExit, match="one checkpoint"):
        main(["views", "a.pt", "b.pt"])
    with pytest.raises(SystemExit, match="one checkpoint"):
        main(["views", "model.onnx"])


def test_ensemble_scores_a_7_class_model_on_the_first_models_classes(ckpt_factory, make_model, tmp_path, capsys):
    from fer_edge import Classifier
    from fer_edge.preprocess import normalize
    from tests.constants import LABELS3, LABELS7
    from tools.average_models import main
    from train.data import load_split

    data = ckpt_factory.make_image_folder(tmp_path / "data", LABELS7)
    three = make_model(tmp_path, LABELS3, input_size=48, name="three.onnx", seed=1)
    seven = make_model(tmp_path, LABELS7, input_size=48, name="seven.onnx", seed=2)
    main(["ensemble", str(three), str(seven), str(three), "--data", str(data), "--threads", "1", "--subsets"])
    lines = capsys.readouterr().out.splitlines()
    # Both are scored on the 3 classes' 12 val images; the 7-class model by its logits for them alone.
    clf = Classifier(seven, threads=1)
    val = load_split(data, "val", LABELS3, 48)
    logits = clf.logits(normalize(val.images, clf.spec))[:, [LABELS7.index(c) for c in LABELS3]]
    right = int((logits.argmax(1) == val.labels).sum())
    assert lines[1].startswith(f"{seven}: {right} of 12 right")
    assert lines[2].startswith("  against") and lines[-1].startswith("mean logits of all: ")
    subsets = [line.split(":")[0] for line in lines if line.startswith("mean logits of ") and "all" not in line]
    assert subsets == ["mean logits of three.onnx + seven.onnx", "mean logits of three.onnx + three.onnx",
                       "mean logits of seven.onnx + three.onnx"]
    assert lines[-2].startswith("best subset (chosen on val): ")


def test_ensemble_refuses_a_model_without_the_first_models_classes(ckpt_factory, make_model, tmp_path):
    from tests.constants import LABELS2, LABELS3
    from tools.average_models import main

    data = ckpt_factory.make_image_folder(tmp_path / "data", LABELS3)
    three = make_model(tmp_path, LABELS3, input_size=48, name="three.onnx")
    two = make_model(tmp_path, LABELS2, input_size=48, name="two.onnx")
    with pytest.raises(SystemExit, match=r"two.onnx has no logit for neutral \(its labels: happy, sad\)"):
        main(["ensemble", str(three), str(two), "--data", str(data), "--threads", "1"])
