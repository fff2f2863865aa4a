"""The fer-edge command: formats, options, exit codes, output files, progress."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import fer_edge
from fer_edge import classifier as classifier_module
from fer_edge.cli import cli
from tests.constants import LABELS2, REPO


@pytest.fixture
def photos(tmp_path) -> Path:
    """3 good face crops, 1 broken file, 1 non-image (skipped in the walk)."""
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg", "sub/c.bmp"):
        Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(d / name)
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    (d / "notes.txt").write_text("skip me")
    return d


def invoke(*args: str, model: Path | None = None):
    argv = list(args) + (["--model", str(model)] if model else [])
    return CliRunner().invoke(cli, argv, catch_exceptions=False)


def test_json_is_one_array_with_every_file(photos, model_path):
    r = invoke("classify", str(photos), "--format", "json", model=model_path)
    assert r.exit_code == 1
    records = json.loads(r.stdout)
    assert [Path(x["path"]).name for x in records] == ["a.png", "b.jpg", "broken.jpg", "c.bmp"]
    broken = records[2]
    assert set(broken) == {"path", "error"} and "broken.jpg" in broken["error"]
    good = records[0]
    assert set(good) == {"path", "width", "height", "detected", "faces", "label", "score",
                         "probabilities"}
    assert good["label"] in LABELS2 and list(good["probabilities"]) == LABELS2
    assert good["faces"][0]["box"] == [0, 0, 48, 48]
    assert r.stderr.count("fer-edge: error: ") == 1 and "broken.jpg" in r.stderr


def test_jsonl_is_one_record_per_line(photos, model_path):
    r = invoke("classify", str(photos), "--format", "jsonl", model=model_path)
    lines = r.stdout.splitlines()
    assert len(lines) == 4
    assert [("error" in json.loads(line)) for line in lines] == [False, False, True, False]


def test_csv_has_a_row_per_face_and_probability_columns(photos, model7_path):
    r = invoke("classify", str(photos), "--format", "csv", model=model7_path)
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == 4
    labels = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    assert [k for k in rows[0] if k.startswith("prob_")] == [f"prob_{x}" for x in labels]
    ok = rows[0]
    assert ok["label"] in labels and ok["error"] == "" and ok["x"] == "0" and ok["w"] == "48"
    assert abs(sum(float(ok[f"prob_{x}"]) for x in labels) - 1) < 1e-4
    bad = rows[2]
    assert bad["label"] == "" and "broken.jpg" in bad["error"]


def test_table_is_the_default(photos, model_path):
    r = invoke("classify", str(photos), model=model_path)
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["label", "score", "box"]
    assert len(lines) == 5
    assert lines[3].startswith("ERROR") and "broken.jpg" in lines[3]
    assert lines[1].split()[0] in LABELS2


def test_exit_status_0_when_everything_worked(photos, model_path):
    (photos / "broken.jpg").unlink()
    r = invoke("classify", str(photos), model=model_path)
    assert r.exit_code == 0 and r.stderr == ""


@pytest.mark.parametrize("args, message", [
    (["classify"], "Missing argument 'PATHS...'"),
    (["classify", "x.png", "--format", "xml"], "'xml' is not one of 'table', 'json', 'jsonl', 'csv'"),
    (["classify", "x.png", "--batch-size", "0"], "--batch-size"),
    (["classify", "x.png", "--faces", "maybe"], "'maybe' is not one of 'auto', 'on', 'off'"),
    (["classify", "x.png", "--model", "/nonexistent/model.onnx"], "no such model file"),
    (["classify", "x.png", "--provider", "directml"], "available: "),
    (["nonsense"], "No such command"),
])
def test_usage_errors_exit_2(args, message, model_path):
    if "--model" not in args and args[0] == "classify" and len(args) > 1:
        args = args + ["--model", str(model_path)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, r.output
    assert message in r.stderr


def test_provider_error_lists_the_available_providers(photos, model_path):
    r = invoke("classify", str(photos), "--provider", "directml", model=model_path)
    assert r.exit_code == 2
    assert "CPUExecutionProvider (cpu)" in r.stderr


def test_explicit_cpu_provider_and_threads(photos, model_path):
    r = invoke("classify", str(photos / "a.png"), "--provider", "cpu", "--threads", "1", "-v",
               model=model_path)
    assert r.exit_code == 0
    assert "running on CPUExecutionProvider" in r.stderr


def test_output_file_never_overwritten_without_force(photos, model_path, tmp_path):
    out = tmp_path / "results.json"
    out.write_text("precious")
    r = invoke("classify", str(photos), "--format", "json", "-o", str(out), model=model_path)
    assert r.exit_code == 2 and "already exists; use --force" in r.stderr
    assert out.read_text() == "precious"
    r = invoke("classify", str(photos), "--format", "json", "-o", str(out), "--force",
               model=model_path)
    assert r.exit_code == 1
    assert r.stdout == ""
    assert len(json.loads(out.read_text())) == 4
    assert sorted(os.listdir(tmp_path)) == ["photos", "results.json"]  # no temp file left


def test_output_written_atomically_even_when_the_run_dies(photos, model_path, tmp_path,
                                                          monkeypatch):
    out = tmp_path / "results.csv"
    out.write_text("old results")

    def explode(self, *args, **kwargs):
        yield from ()
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(classifier_module.Classifier, "analyze_iter", explode)
    r = CliRunner().invoke(cli, ["classify", str(photos), "--format", "csv", "-o", str(out),
                                 "--force", "--model", str(model_path)])
    assert r.exit_code == 1
    assert "internal error (RuntimeError: disk on fire); run again with --debug" in r.stderr
    assert "Traceback" not in r.output
    assert out.read_text() == "old results"
    assert sorted(os.listdir(tmp_path)) == ["photos", "results.csv"]
    r = CliRunner().invoke(cli, ["classify", str(photos), "--debug", "--model", str(model_path)])
    assert isinstance(r.exception, RuntimeError)


def test_output_may_not_be_an_input(photos, model_path):
    target = photos / "a.png"
    before = target.read_bytes()
    r = invoke("classify", str(target), "-o", str(target), "--force", model=model_path)
    assert r.exit_code == 2 and f"{target} is also an input; results would overwrite it" in r.stderr
    # Found by walking the folder rather than named: refused all the same, the image kept.
    r = invoke("classify", str(photos), "-o", str(target), "--force", "--format", "csv", model=model_path)
    assert r.exit_code == 2 and f"{target} is also an input (found in the folders given)" in r.stderr
    assert target.read_bytes() == before and r.stdout == ""


def test_an_input_the_os_says_is_unreadable_is_attempted_not_refused(photos, model_path, monkeypatch):
    # click's readable check asks os.access (always yes for root, so simulated here): an
    # unreadable file named on the command line must not stop the run before it starts.
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p).endswith("a.png")
                        else real_access(p, mode, **kw))
    r = invoke("classify", str(photos / "a.png"), str(photos / "b.jpg"), "--format", "jsonl", model=model_path)
    assert r.exit_code == 0, r.stderr
    assert [json.loads(line)["path"].rsplit("/", 1)[-1] for line in r.stdout.splitlines()] == ["a.png", "b.jpg"]


def test_output_into_a_missing_folder_is_a_usage_error(photos, model_path, tmp_path):
    r = invoke("classify", str(photos), "-o", str(tmp_path / "no" / "r.json"), model=model_path)
    assert r.exit_code == 2 and "does not exist" in r.stderr


def test_progress_only_when_asked_or_on_a_terminal(photos, model_path):
    quiet = invoke("classify", str(photos), "--batch-size", "1", model=model_path)
    assert "classifying" not in quiet.stderr  # CliRunner's stderr is not a TTY
    shown = invoke("classify", str(photos), "--progress", model=model_path)
    assert "classifying 4/4 (100%)" in shown.stderr
    assert "classifying" not in shown.stdout


def test_verbose_reports_skipped_files_and_summary(photos, model_path):
    r = invoke("classify", str(photos), "-v", model=model_path)
    assert "4 files to classify; 1 skipped" in r.stderr
    assert "4 images, 3 faces, 1 failed, 1 skipped" in r.stderr
    r = invoke("classify", str(photos), "-vv", model=model_path)
    assert "skipped " + str(photos / "notes.txt") in r.stderr


def test_empty_folder_warns_and_succeeds(tmp_path, model_path):
    r = invoke("classify", str(tmp_path), "--format", "json", model=model_path)
    assert r.exit_code == 0 and json.loads(r.stdout) == []
    assert "no image files found" in r.stderr


def test_default_model_missing_is_reported_not_crashed(photos, monkeypatch, tmp_path):
    monkeypatch.setattr(classifier_module, "DEFAULT_MODEL", tmp_path / "none.onnx")
    r = invoke("classify", str(photos))
    assert r.exit_code == 1 and "default model is not installed" in r.stderr


# -- faces ------------------------------------------------------------------------


@pytest.fixture
def two_faces(monkeypatch):
    """The face detector finding two boxes in any image larger than 60 px."""
    import fer_edge.faces as faces
    from fer_edge.blazeface import BlazeFace

    monkeypatch.setattr(faces, "needs_detection",
                        lambda image, mode: mode == "on" or (mode == "auto" and image.width > 60))
    monkeypatch.setattr(BlazeFace, "detect", lambda self, image: [
        faces.FaceBox(10, 10, 30, 30, 1.5), faces.FaceBox(50, 20, 40, 40, 0.5)])
    monkeypatch.setattr(faces, "crop_face",
                        lambda image, b: image.crop((b.x, b.y, b.x + b.w, b.y + b.h)))


def test_faces_in_json_and_csv(tmp_path, model_path, two_faces):
    Image.new("RGB", (120, 80), (90, 90, 90)).save(tmp_path / "group.png")
    Image.new("L", (48, 48), 90).save(tmp_path / "crop.png")
    r = invoke("classify", str(tmp_path), "--format", "json", model=model_path)
    assert r.exit_code == 0
    crop, group = json.loads(r.stdout)
    assert not crop["detected"] and len(crop["faces"]) == 1
    assert group["detected"] and [f["box"] for f in group["faces"]] == [[10, 10, 30, 30],
                                                                        [50, 20, 40, 40]]
    assert group["faces"][0]["detection_score"] == 1.5
    assert group["label"] == group["faces"][1]["label"]  # the larger face
    r = invoke("classify", str(tmp_path), "--format", "csv", model=model_path)
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [(Path(x["path"]).name, x["face"]) for x in rows] == [
        ("crop.png", "0"), ("group.png", "0"), ("group.png", "1")]
    r = invoke("classify", str(tmp_path), "--faces", "off", "--format", "jsonl", model=model_path)
    assert all(not json.loads(line)["detected"] for line in r.stdout.splitlines())


def test_no_face_is_a_row_with_empty_label(tmp_path, model_path, monkeypatch):
    from fer_edge.blazeface import BlazeFace

    monkeypatch.setattr(BlazeFace, "detect", lambda self, image: [])
    Image.new("RGB", (300, 200)).save(tmp_path / "landscape.png")
    r = invoke("classify", str(tmp_path), "--format", "csv", model=model_path)
    assert r.exit_code == 0
    [row] = list(csv.DictReader(io.StringIO(r.stdout)))
    assert row["label"] == "" and row["error"] == "" and row["detected"] == "1"
    r = invoke("classify", str(tmp_path), model=model_path)
    assert "(no face)" in r.stdout


def test_annotate_writes_copies_and_never_touches_inputs(photos, model_path, tmp_path):
    before = {p: p.read_bytes() for p in photos.rglob("*") if p.is_file()}
    out = tmp_path / "annotated"
    r = invoke("classify", str(photos), "--annotate", str(out), model=model_path)
    assert r.exit_code == 1  # the broken file
    assert sorted(p.name for p in out.iterdir()) == ["a.annotated.png", "b.annotated.png",
                                                     "c.annotated.png"]
    assert {p: p.read_bytes() for p in photos.rglob("*") if p.is_file()} == before
    # A second run keeps the first run's copies.
    invoke("classify", str(photos), "--annotate", str(out), model=model_path)
    assert len(list(out.iterdir())) == 6


def test_annotate_into_a_file_is_a_usage_error(photos, model_path):
    r = invoke("classify", str(photos), "--annotate", str(photos / "a.png"), model=model_path)
    assert r.exit_code == 2


def test_real_photo_with_real_face_detection(tmp_path, model_path):
    data = pytest.importorskip("skimage.data")
    Image.fromarray(data.astronaut()).save(tmp_path / "astronaut.jpg")
    r = invoke("classify", str(tmp_path / "astronaut.jpg"), "--format", "json",
               "--annotate", str(tmp_path / "out"), model=model_path)
    assert r.exit_code == 0, r.stderr
    [record] = json.loads(r.stdout)
    assert record["detected"] and len(record["faces"]) >= 1 and record["label"] in LABELS2
    assert (tmp_path / "out" / "astronaut.annotated.png").is_file()


# -- info, version, the installed entry point ------------------------------------------


def test_info_shows_metadata_providers_and_version(model7_path):
    r = invoke("info", model=model7_path)
    assert r.exit_code == 0
    assert f"fer-edge:     {fer_edge.__version__}" in r.stdout
    assert "labels:       angry, disgust, fear, happy, neutral, sad, surprise" in r.stdout
    assert "providers:" in r.stdout and "running on:   CPUExecutionProvider" in r.stdout
    r = invoke("info", "--json", model=model7_path)
    d = json.loads(r.stdout)
    assert d["model"]["preprocess"]["input_size"] == 48 and d["provider"]


def test_info_without_a_model_still_lists_providers(monkeypatch, tmp_path):
    monkeypatch.setattr(classifier_module, "DEFAULT_MODEL", tmp_path / "none.onnx")
    r = invoke("info")
    assert r.exit_code == 1
    assert "CPUExecutionProvider" in r.stdout and "default model is not installed" in r.stderr


def test_version():
    r = invoke("--version")
    assert r.exit_code == 0 and r.stdout == f"fer-edge {fer_edge.__version__}\n"


def test_help_documents_exit_status():
    r = invoke("classify", "--help")
    assert "Exit status:" in r.stdout and "2  usage error" in r.stdout


def test_real_process_exit_codes(photos, model_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "fer_edge", *args], capture_output=True,
                              text=True, cwd=REPO, timeout=300)

    assert run("classify", str(photos / "a.png"), "--model", str(model_path)).returncode == 0
    failed = run("classify", str(photos), "--model", str(model_path))
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert run("classify", "--format", "xml", str(photos)).returncode == 2
    assert run("--version").stdout.strip() == f"fer-edge {fer_edge.__version__}"


def test_real_fer2013_crops_are_classified_whole(fer_data, model7_path):
    files = sorted((fer_data / "val" / "happy").glob("*.jpg"))[:20]
    assert len(files) == 20
    r = invoke("classify", *map(str, files), "--format", "jsonl", model=model7_path)
    assert r.exit_code == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(records) == 20
    # 48x48 face crops: --faces auto classifies them whole, no detection needed.
    assert all((x["width"], x["height"], x["detected"]) == (48, 48, False) for x in records)
    assert len({round(x["score"], 6) for x in records}) > 1


def test_broken_face_detector_file_is_named(tmp_path, model_path, monkeypatch):
    from fer_edge import blazeface

    broken = tmp_path / "blazeface.onnx"
    broken.write_bytes(b"not a model")
    monkeypatch.setattr(blazeface, "DEFAULT_MODEL", broken)
    Image.new("RGB", (640, 480)).save(tmp_path / "photo.jpg")
    r = invoke("classify", str(tmp_path / "photo.jpg"), model=model_path)
    assert r.exit_code == 1
    assert "face detector model" in r.stderr and "blazeface.onnx" in r.stderr
    assert "Traceback" not in r.output
    r = invoke("classify", str(tmp_path / "photo.jpg"), "--faces", "off", model=model_path)
    assert r.exit_code == 0


# -- the first ten minutes (issue 18) ----------------------------------------------


def test_a_path_where_the_command_belongs_suggests_classify(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    r = invoke("photos/", "--format", "json")
    assert r.exit_code == 2
    assert "No such command 'photos/'" in r.stderr
    assert "fer-edge classify photos/ --format json" in r.stderr
    for word in ("photos", "me.jpg"):  # an existing folder; an image name
        assert f"fer-edge classify {word}" in invoke(word).stderr
    r = invoke("clasify")  # a mistyped command is not a path: no such hint
    assert r.exit_code == 2 and "fer-edge classify" not in r.stderr


def test_a_missing_path_is_reported_once_in_fitting_words(tmp_path, monkeypatch, model_path):
    monkeypatch.chdir(tmp_path)
    r = invoke("classify", "gone/", "gone.jpg", "--format", "json", model=model_path)
    assert r.exit_code == 1
    assert r.stderr.splitlines() == ["fer-edge: error: gone: no such folder",
                                     "fer-edge: error: gone.jpg: no such file"]
    assert json.loads(r.stdout) == [{"path": "gone", "error": "gone: no such folder"},
                                    {"path": "gone.jpg", "error": "gone.jpg: no such file"}]
    r = invoke("classify", "gone.jpg", "gone.jpg", "--format", "json", model=model_path)
    assert r.exit_code == 1  # the same path twice: one report
    assert r.stderr.splitlines() == ["fer-edge: error: gone.jpg: no such file"]
    assert json.loads(r.stdout) == [{"path": "gone.jpg", "error": "gone.jpg: no such file"}]


def _run_on_a_terminal(args: list[str], cwd: Path) -> str:
    """Run ``python -m fer_edge ARGS`` with stdout and stderr on one pseudo-terminal; its screen."""
    pty = pytest.importorskip("pty")
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "fer_edge", *args], stdout=follower,
                            stderr=follower, stdin=subprocess.DEVNULL, cwd=cwd)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=300) == 1
    return b"".join(chunks).decode()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pseudo-terminals")
def test_on_a_terminal_each_failure_shows_once(tmp_path, model_path):
    Image.new("L", (48, 48), 100).save(tmp_path / "ok.png")
    screen = _run_on_a_terminal(["classify", "ok.png", "nope.jpg", "--model", str(model_path)],
                                tmp_path)
    assert screen.count("nope.jpg") == 1, screen  # the table's ERROR row, no stderr echo
    assert "ERROR" in screen and "no such file" in screen and "ok.png" in screen
    # Where the results go elsewhere, stderr is the only report the terminal gets.
    out = tmp_path / "r.json"
    screen = _run_on_a_terminal(["classify", "ok.png", "nope.jpg", "--model", str(model_path),
                                 "-o", str(out), "--format", "json"], tmp_path)
    assert screen.count("fer-edge: error: nope.jpg: no such file") == 1, screen
    assert "nope.jpg" in out.read_text()


def test_annotated_copies_in_an_input_folder_are_not_classified_again(photos, model_path):
    out = photos / "annotated"
    first = invoke("classify", str(photos), "--format", "json", "--faces", "off",
                   "--annotate", str(out), model=model_path)
    assert len(list(out.glob("*.annotated.png"))) == 3
    second = invoke("classify", str(photos), "--format", "json", "--faces", "off",
                    "--annotate", str(out), "-v", model=model_path)
    paths = [Path(x["path"]).name for x in json.loads(second.stdout)]
    assert paths == [Path(x["path"]).name for x in json.loads(first.stdout)]
    assert not any(".annotated" in p for p in paths)
    assert "4 files to classify; 4 skipped" in second.stderr  # notes.txt + the 3 copies


def test_info_names_the_training_data_and_explains_the_colour_mode(tmp_path, make_model):
    model = make_model(tmp_path, LABELS2, training_data="train split of "
                       "../shared/data/fer2013 (classes happy, sad)")
    r = invoke("info", model=model)
    assert r.exit_code == 0, r.stderr
    assert "trained on:   FER-2013, train split (classes happy, sad)\n" in r.stdout
    assert "../shared" not in r.stdout
    assert "input:        32x32, 8-bit grey (luma) repeated on 3 channels (gray3), " in r.stdout


def test_info_and_models_show_the_temperature(tmp_path, make_model, monkeypatch):
    """Issue 13: the calibration temperature the runtime applies is visible."""
    from fer_edge import zoo

    model = make_model(tmp_path, LABELS2, name="default.onnx", temperature=1.5)
    r = invoke("info", model=model)
    assert r.exit_code == 0, r.stderr
    assert "temperature:  1.5 (probabilities = softmax(logits / T))\n" in r.stdout
    assert json.loads(invoke("info", "--json", model=model).stdout)["model"]["temperature"] == 1.5
    monkeypatch.setattr(zoo, "MODELS_DIR", tmp_path)
    r = CliRunner().invoke(cli, ["models", "--json"])
    assert r.exit_code == 0, r.output
    card = json.loads(r.output)[0]
    assert (card["temperature"], card["calibration"]) == (1.5, None)


def test_info_and_models_name_fp16_stored_weights(tmp_path, make_model, monkeypatch):
    """A file exported with --weights fp16 computes in fp32; both facts are shown."""
    from fer_edge import zoo

    model = make_model(tmp_path, LABELS2, name="default.onnx", weights_storage="fp16")
    r = invoke("info", model=model)
    assert r.exit_code == 0, r.stderr
    assert "architecture: test_cnn (fp32, fp16 weights, tta none)" in r.stdout
    monkeypatch.setattr(zoo, "MODELS_DIR", tmp_path)
    r = CliRunner().invoke(cli, ["models"])
    assert r.exit_code == 0, r.output
    assert "fp32, fp16 weights" in r.output.splitlines()[1]
    card = json.loads(CliRunner().invoke(cli, ["models", "--json"]).output)[0]
    assert (card["precision"], card["weights"]) == ("fp32", "fp16")


def test_json_on_stdout_stays_whole_when_the_run_fails_midway(photos, model_path, monkeypatch):
    """A failure after some images (here the model) still closes the JSON array on stdout."""
    from fer_edge import ModelError
    from fer_edge.classifier import Classifier

    real = Classifier.analyze_iter

    def failing(self, images, **kw):
        for i, result in enumerate(real(self, images, **kw)):
            if i == 2:
                raise ModelError("model.onnx: inference failed (simulated)")
            yield result

    monkeypatch.setattr(Classifier, "analyze_iter", failing)
    r = invoke("classify", str(photos), "--format", "json", "--batch-size", "1", model=model_path)
    assert r.exit_code == 1 and "simulated" in r.stderr
    records = json.loads(r.stdout)
    assert [Path(x["path"]).name for x in records] == ["a.png", "b.jpg"]
    assert all("label" in x for x in records)


def test_square_images_with_no_face_get_a_hint_about_faces_off(tmp_path, model_path):
    # A tight face crop bigger than 160 px goes to the detector under --faces auto; when it
    # finds nothing in square images the run says how to classify them whole.
    Image.new("L", (224, 224), 128).save(tmp_path / "crop.png")
    Image.new("L", (640, 480), 128).save(tmp_path / "landscape.png")
    r = invoke("classify", str(tmp_path), "--format", "jsonl", model=model_path)
    assert r.exit_code == 0, r.stderr
    assert [json.loads(line)["faces"] for line in r.stdout.splitlines()] == [[], []]
    assert ("no face found in 1 square image(s) larger than 160 px; if they are face crops already, "
            "--faces off classifies each image whole") in r.stderr
    for mode in ("on", "off"):
        assert "--faces off classifies" not in invoke("classify", str(tmp_path), "--faces", mode,
                                                      model=model_path).stderr


def test_models_says_where_each_speed_was_timed():
    from fer_edge.cli import _timed_on
    from fer_edge.zoo import model_cards

    assert _timed_on({"speed_machine": "AMD EPYC", "speed_threads": 2}) == "AMD EPYC, 2 threads"
    assert _timed_on({"speed_machine": None, "speed_threads": None}) == "-"
    lines = invoke("models").stdout.splitlines()
    assert "timed on" in lines[0]
    for card, line in zip(model_cards(), lines[1:]):
        assert line.startswith(card["name"]) and _timed_on(card) in line and card["speed_machine"]


def test_a_shipped_name_in_the_wrong_case_is_pointed_to_the_right_one():
    r = CliRunner().invoke(cli, ["classify", "x.png", "--model", "FAST"])
    assert r.exit_code != 0
    assert "'FAST' is not a shipped model; model names are lower case: did you mean 'fast'?" in r.output
