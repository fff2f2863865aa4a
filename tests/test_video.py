"""``fer-edge video`` and ``Classifier.analyze_video``: tracking, outputs, bad input.

The videos are made here with PyAV from scikit-image's astronaut photo (tiny:
24 frames of 192x128), so nothing large is committed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fer_edge.annotate import annotate
from fer_edge.results import FaceResult, Prediction
from fer_edge.timeline import Timeline, TrackSummary, draw_timeline
from fer_edge.tracking import BoxMotion, EmaSmoother, IouTracker, iou

av = pytest.importorskip("av", reason="video tests need PyAV: pip install '.[video]'")

from fer_edge import Classifier  # noqa: E402  (after the skip: nothing to test without PyAV)
from fer_edge.cli import cli  # noqa: E402
from fer_edge.errors import DependencyError, ModelError  # noqa: E402
from fer_edge.video import TrackedFace, VideoError, VideoSource, require_av  # noqa: E402
from fer_edge.video_cli import VideoOptions, _live_stop, check_usage  # noqa: E402
from fer_edge.video_output import _Labelled  # noqa: E402

W, H, N, RATE = 192, 128, 24, 12


def _frames(n: int = N, faces: int = 2) -> list[Image.Image]:
    """Frames where ``faces`` astronaut heads move smoothly (1 px per frame) on noise."""
    from skimage import data  # the test photos: scikit-image's astronaut

    head = Image.fromarray(data.astronaut()).crop((128, 17, 322, 211))  # the face with context
    rng = np.random.default_rng(0)
    bg = Image.fromarray(rng.integers(60, 200, (H // 8, W // 8, 3), dtype=np.uint8)).resize((W, H))
    frames = []
    for i in range(n):
        im = bg.copy()
        for k in range(faces):
            side = 72 - 8 * k
            im.paste(head.resize((side, side)), (2 + (W // 2) * k + i, 4 + 48 * k + i // 2))
        frames.append(im)
    return frames


def _write(path: Path, frames: list[Image.Image], codec: str = "libx264", fmt: str | None = None) -> Path:
    out = av.open(str(path), "w", format=fmt)
    stream = out.add_stream(codec, rate=RATE)
    stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
    for im in frames:
        for packet in stream.encode(av.VideoFrame.from_image(im)):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return _write(tmp_path_factory.mktemp("video") / "two.mp4", _frames())


@pytest.fixture(scope="module")
def clf() -> Classifier:
    return Classifier("fast", threads=1)


def _run(*args: str):
    return CliRunner().invoke(cli, ["video", *args, "--model", "fast", "--threads", "1"])


# -- tracking, smoothing, summaries (no video needed) ------------------------


def test_iou_and_tracker_keep_ids_and_retire_missing_faces():
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    t = IouTracker(max_missed=1)
    assert t.update([(0, 0, 10, 10), (40, 0, 10, 10)]) == [1, 2]
    assert t.update([(41, 1, 10, 10)]) == [2]  # face 1 missed once: still alive
    assert t.live == [1, 2]
    assert t.update([(42, 1, 10, 10)]) == [2] and t.ended == [1]
    assert t.update([(0, 0, 10, 10)]) == [3]  # came back too late: a new id, never reused


def test_ema_smoother_damps_one_frame_flicker_and_forgets():
    s = EmaSmoother(alpha=0.3)
    s.update(7, [1.0, 0.0])
    flick = s.update(7, [0.0, 1.0])
    assert flick.argmax() == 0 and flick[1] == pytest.approx(0.3)
    s.forget([7])
    assert s.update(7, [0.0, 1.0]).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError):
        EmaSmoother(alpha=0)


def test_box_motion_carries_a_box_by_its_velocity_in_time():
    m = BoxMotion(alpha=0.5)
    assert m.offset(1, 3.0) == (0.0, 0.0)  # never seen
    m.observe(1, (0, 0, 10, 10), 0.0)
    assert m.offset(1, 1.0) == (0.0, 0.0)  # seen once: no velocity yet
    m.observe(1, (20, 10, 10, 10), 1.0)  # 20 px/s right, 10 down; first velocity taken whole
    assert m.offset(1, 1.5) == (pytest.approx(5.0), pytest.approx(2.5))
    m.observe(1, (20, 10, 10, 10), 2.0)  # stopped: the average halves the velocity
    assert m.offset(1, 3.0) == (pytest.approx(5.0), pytest.approx(2.5))
    assert m.offset(1, 1.0) == (0.0, 0.0)  # never backwards in time
    m.forget([1])
    assert m.offset(1, 3.0) == (0.0, 0.0)
    with pytest.raises(ValueError):
        BoxMotion(alpha=0)


def test_timeline_memory_is_bounded_and_keeps_the_mean():
    tl = Timeline(["a", "b"], max_points=8)
    for i in range(100):
        tl.add(1, i / 10, {"a": float(i % 2), "b": 1.0 - i % 2})
    times, probs = tl.points(1)
    assert len(times) <= 8
    assert probs[:, 0].mean() == pytest.approx(0.5, abs=0.1)
    assert times[0] < times[-1]
    img = draw_timeline(tl, width=400)
    assert img.width == 400 and img.mode == "RGB"


def test_summary_shares_and_dominant_label():
    s = TrackSummary(["happy", "sad"])
    for t, label in enumerate(["sad", "sad", "happy"]):
        s.add(4, t * 0.5, label)
    (row,) = s.rows()
    assert row["dominant"] == "sad" and row["frames"] == 3
    assert row["share"] == {"happy": pytest.approx(1 / 3), "sad": pytest.approx(2 / 3)}
    assert (row["first_s"], row["last_s"]) == (0.0, 1.0)


# -- the Python API ------------------------------------------------------------


def test_faces_moving_smoothly_keep_one_track_each(clf, video):
    seen: dict[int, list[int]] = {}  # position from the left -> track ids
    frames = 0
    with clf.analyze_video(video) as analysis:
        for result in analysis:
            frames += 1
            assert len(result.faces) == 2, f"frame {result.frame}: {len(result.faces)} faces"
            # Left to right, the faces are the same two people throughout.
            for position, face in enumerate(sorted(result.faces, key=lambda f: f.box[0])):
                seen.setdefault(position, []).append(face.track)
    assert frames == N
    assert [set(seen[0]), set(seen[1])] == [{1}, {2}]
    assert analysis.stats.tracks == 2 and analysis.stats.dropped == 0


class _CountingDetector:
    """The shipped detector, counting the frames it is asked to look at."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.frames: list[tuple[int, int]] = []

    def detect(self, image):
        self.frames.append(image.size)
        return self.inner.detect(image)


@pytest.fixture
def counting(clf) -> tuple[Classifier, _CountingDetector]:
    detector = _CountingDetector(clf.detector)
    return Classifier("fast", threads=1, detector=detector), detector


def test_detect_every_2_detects_half_the_frames_and_keeps_one_track_each(counting, video):
    clf2, detector = counting
    seen: dict[int, list[int]] = {}
    boxes: dict[int, list[tuple[int, tuple[int, int, int, int]]]] = {}
    with clf2.analyze_video(video, detect_every=2) as analysis:
        results = list(analysis)
    assert len(results) == N and len(detector.frames) == N // 2
    for result in results:
        assert len(result.faces) == 2, f"frame {result.frame}: {len(result.faces)} faces"
        assert result.detected == (result.frame % 2 == 0)
        for position, face in enumerate(sorted(result.faces, key=lambda f: f.box[0])):
            seen.setdefault(position, []).append(face.track)
            boxes.setdefault(position, []).append((result.frame, face.box))
            assert face.detected == result.detected
            assert (face.detection_score is None) == (not face.detected)
            # Whole records on every frame: the same fields, a classified expression.
            record = result.records("v.mp4")[0].to_record() if position == 0 else None
            if record is not None:
                assert set(record) == {"path", "frame", "time_s", "track", "detected", "box",
                                       "detection_score", "label", "score", "probabilities"}
                assert record["detected"] is result.detected
                assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert [set(seen[0]), set(seen[1])] == [{1}, {2}]
    # A carried box sits between the detections around it (the faces move ~1 px per frame).
    for track in boxes.values():
        for (_, before), (_, carried), (_, after) in zip(track[0::2], track[1::2], track[2::2]):
            for k in (0, 1):
                assert min(before[k], after[k]) - 2 <= carried[k] <= max(before[k], after[k]) + 2
    s = analysis.stats
    assert (s.analysed, s.detections, s.carried, s.faces, s.tracks) == (N, N // 2, N, 2 * N, 2)


def test_detect_every_counts_analysed_frames(counting, video):
    clf2, detector = counting
    with clf2.analyze_video(video, every=2, detect_every=3) as analysis:
        detected = [r.frame for r in analysis if r.detected]
    # Analysed frames 0, 2, 4, ...; the detector runs on every third of them.
    assert detected == list(range(0, N, 6)) and len(detector.frames) == len(detected)
    assert analysis.stats.analysed == N // 2


class _SlowDetector(_CountingDetector):
    """The counting detector, made slower than decoding (30 ms a frame; decoding takes ~1)."""

    def detect(self, image):
        time.sleep(0.03)
        return super().detect(image)


@pytest.fixture
def slow(clf) -> tuple[Classifier, _SlowDetector]:
    detector = _SlowDetector(clf.detector)
    return Classifier("fast", threads=1, detector=detector), detector


@pytest.fixture
def live(monkeypatch) -> None:
    """Open every source as a live one (no camera here): the test video, decoded at full speed."""
    monkeypatch.setattr(VideoSource, "parse",
                        classmethod(lambda cls, source: VideoSource(os.fspath(source), "camera 9", True)))


def test_live_source_drops_frames_when_inference_falls_behind(slow, video, live):
    """A live source keeps only the newest frame: every decoded frame is analysed or counted
    dropped, the detector sees only the analysed ones, in order, and the last frame is kept.
    Inference at 30 ms a frame (below the old 0.1 s wait) must not pace the decoder."""
    clf2, detector = slow
    with clf2.analyze_video(video) as analysis:
        results = list(analysis)
    s = analysis.stats
    assert analysis.info.live and s.decoded == N
    assert s.dropped > 0 and s.analysed + s.dropped == s.decoded
    assert len(results) == s.analysed == len(detector.frames)
    frames = [r.frame for r in results]
    assert frames == sorted(set(frames)) and frames[-1] == N - 1
    assert [round(r.time_s * RATE) for r in results] == frames
    assert all(r.analysed and len(r.faces) == 2 for r in results)


def test_file_never_drops_frames_however_slow_inference_is(slow, video):
    """The same slow inference on a file: the decoder waits, every frame is analysed."""
    clf2, detector = slow
    with clf2.analyze_video(video) as analysis:
        frames = [r.frame for r in analysis]
    s = analysis.stats
    assert frames == list(range(N)) and len(detector.frames) == N
    assert (s.decoded, s.analysed, s.dropped) == (N, N, 0)


def test_cli_reports_the_frames_a_live_source_dropped(slow, video, live, monkeypatch):
    """``fer-edge video`` on a live source that falls behind: exit 0, one stderr line with the
    dropped count, and the frames in the records plus the dropped ones make every frame."""
    monkeypatch.setattr("fer_edge.video_cli._load_classifier", lambda model: slow[0])
    r = _run(str(video), "--format", "csv")
    assert r.exit_code == 0, r.output
    (line,) = [x for x in r.stderr.splitlines() if "dropped" in x]
    assert line.startswith("fer-edge: camera 9: ") and line.endswith(
        " frames dropped because analysis fell behind the live source")
    dropped = int(line.split(": ")[2].split()[0])
    frames = {row.split(",")[1] for row in r.stdout.splitlines()[1:]}
    assert dropped > 0 and len(frames) + dropped == N


def test_detect_every_must_be_a_whole_number_from_1(clf, video):
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="detect_every must be an int >= 1"):
            clf.analyze_video(video, detect_every=bad)
    r = _run(str(video), "--detect-every", "0")
    assert r.exit_code == 2 and "'--detect-every'" in r.output and ">=1" in r.output
    opts = VideoOptions("csv", None, False, 1, None, None, None, None, None, None, None, 0)
    with pytest.raises(click.BadParameter, match="N>=1"):
        check_usage(str(video), None, opts)


def test_annotated_box_colour_follows_the_label_not_the_track():
    face = FaceResult((10, 10, 40, 40), 0.9, Prediction("happy", 0.8, {"happy": 0.8}))
    tracked = [TrackedFace(face.box, 0.9, face.prediction, track) for track in (1, 2)]
    images = [annotate(Image.new("RGB", (64, 64), "white"), [_Labelled(f)]) for f in tracked]
    plain = annotate(Image.new("RGB", (64, 64), "white"), [face])
    assert images[0].getpixel((10, 30)) == images[1].getpixel((10, 30)) == plain.getpixel((10, 30))
    assert plain.getpixel((10, 30)) != (255, 255, 255)


def test_analyze_video_is_lazy_and_times_are_frame_times(clf, video):
    analysis = clf.analyze_video(video, every=3)
    first = next(analysis)
    # The decoder runs ahead only by its small queue, not through the whole file.
    assert analysis.stats.decoded < N
    rest = list(analysis)
    frames = [first.frame] + [r.frame for r in rest]
    assert frames == list(range(0, N, 3))
    assert [round(r.time_s * RATE) for r in [first, *rest]] == frames
    assert analysis.info.width == W and analysis.info.fps == RATE


def test_start_end_and_stop(clf, video):
    with clf.analyze_video(video, start=0.5, end=1.0) as analysis:
        frames = [r.frame for r in analysis]
    assert frames == list(range(6, 12))
    analysis = clf.analyze_video(video)
    next(analysis)
    analysis.stop()  # what Ctrl-C does on a camera: the iteration ends cleanly
    assert len(list(analysis)) <= 1
    analysis.close()


def test_a_start_past_the_end_is_a_bad_start_not_a_damaged_file(clf, video):
    with pytest.raises(ValueError, match=r"start 100 s is at or past the end of .*two.mp4 \(\d+\.\d\d s long\)"):
        clf.analyze_video(video, start=100)
    r = _run(str(video), "--start", "100")
    assert r.exit_code == 2 and "Invalid value for '--start': start 100 s is at or past the end" in r.stderr
    assert "truncated" not in r.stderr and r.stdout == ""


def test_live_stop_turns_the_first_sigint_into_a_clean_stop(clf, video):
    # _live_stop leaves an inherited SIG_IGN alone (as after ``pytest &``): start from
    # the disposition an interactive run has.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        analysis = clf.analyze_video(video)
        with _live_stop(analysis) as received:
            os.kill(os.getpid(), signal.SIGINT)
            assert received == [signal.SIGINT]
        assert analysis._stop.is_set()
        analysis.close()
    finally:
        signal.signal(signal.SIGINT, before)


def test_importing_fer_edge_does_not_import_av_and_missing_av_names_the_extra(monkeypatch):
    code = "import sys, fer_edge, fer_edge.cli; print('av' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(DependencyError,
                       match=r"pip install av \(or, in a fer-edge checkout, pip install '\.\[video\]'\)"):
        require_av()


# -- the command ------------------------------------------------------------------


def test_cli_jsonl_records_summary_timeline(tmp_path, video):
    out, summary, chart = tmp_path / "r.jsonl", tmp_path / "s.csv", tmp_path / "t.png"
    r = _run(str(video), "--format", "jsonl", "-o", str(out), "--every", "2", "--smooth",
             "--summary", str(summary), "--timeline", str(chart))
    assert r.exit_code == 0, r.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 * (N // 2)
    first = records[0]
    assert {"path", "frame", "time_s", "track", "detected", "box", "label", "score",
            "probabilities"} <= set(first)
    assert all(rec["detected"] is True for rec in records)
    assert {rec["frame"] for rec in records} == set(range(0, N, 2))
    assert {rec["track"] for rec in records} == {1, 2}
    rows = summary.read_text().splitlines()
    assert rows[0].startswith("track,frames,first_s,last_s,dominant,share_")
    assert len(rows) == 3 and rows[1].startswith(f"1,{N // 2},0.0,")
    assert Image.open(chart).format == "PNG"


def test_cli_csv_and_table_reuse_the_writers(tmp_path, video):
    r = _run(str(video), "--format", "csv", "--end", "0.25")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("path,frame,time_s,track,detected,x,y,w,h,detection_score,label,"
                               "score,prob_")
    assert len(lines) == 1 + 2 * 3
    r = _run(str(video), "--format", "csv", "--end", "0.25", "--detect-every", "2")
    assert r.exit_code == 0, r.output
    rows = [line.split(",") for line in r.stdout.splitlines()[1:]]
    assert [(row[1], row[4]) for row in rows] == [("0", "1")] * 2 + [("1", "0")] * 2 + [("2", "1")] * 2
    assert all(row[9] == "" for row in rows if row[4] == "0")  # no detection score when carried
    r = _run(str(video), "--end", "0.1", "--detect-every", "2")
    assert r.exit_code == 0 and r.stdout.count("(carried)") == 2
    r = _run(str(video), "--end", "0.1")
    assert r.exit_code == 0 and r.stdout.splitlines()[0].split()[:3] == ["frame", "time_s", "track"]


def test_cli_annotate_same_size_rate_and_never_overwrites(tmp_path, video):
    target = tmp_path / "out.mp4"
    r = _run(str(video), "--every", "4", "--annotate", str(target), "-o", str(tmp_path / "r.json"),
             "--format", "json")
    assert r.exit_code == 0, r.output
    with av.open(str(target)) as c:
        s = c.streams.video[0]
        frames = sum(1 for _ in c.decode(s))
        assert (s.width, s.height, s.average_rate, frames) == (W, H, RATE, N)
    assert isinstance(json.loads((tmp_path / "r.json").read_text()), list)
    size = target.stat().st_size
    r = _run(str(video), "--annotate", str(target))
    assert r.exit_code == 2 and "already exists" in r.output
    assert target.stat().st_size == size
    assert _run(str(video), "--annotate", str(target), "--force", "--end", "0.2").exit_code == 0
    assert target.stat().st_size != size


def test_cli_not_a_video_missing_camera_bad_url(tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n" * 20)
    for args in ([str(fake)], ["--camera", "63"], ["rtsp://127.0.0.1:1/none"],
                 [str(tmp_path / "missing.mp4")]):
        r = _run(*args, "-o", str(tmp_path / "r.csv"))
        assert r.exit_code == 1, (args, r.output)
        errors = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and errors[0].startswith("fer-edge: error: "), errors
        assert not (tmp_path / "r.csv").exists()


def test_cli_truncated_video_keeps_what_decoded(tmp_path):
    whole = _write(tmp_path / "whole.mkv", _frames(), fmt="matroska")
    data = whole.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "r.json"
    r = _run(str(cut), "--format", "json", "-o", str(out))
    assert r.exit_code == 1, r.output
    (line,) = [x for x in r.stderr.splitlines() if x.strip()]
    assert "decoding stopped at frame" in line and "cut.mkv" in line
    stopped = int(line.split("decoding stopped at frame ")[1].split()[0])
    records = json.loads(out.read_text())  # whole, valid JSON
    assert 0 < stopped < N and records
    assert max(rec["frame"] for rec in records) == stopped - 1


def test_cli_usage_errors(tmp_path, video):
    assert _run().exit_code == 2
    assert _run(str(video), "--every", "2", "--fps", "3").exit_code == 2
    assert _run(str(video), "--summary", str(tmp_path / "s.txt")).exit_code == 2
    assert _run(str(video), "--annotate", str(tmp_path / "a.gif")).exit_code == 2
    assert _run(str(video), "-o", str(video), "--force").exit_code == 2


def test_video_error_is_a_fer_edge_error():
    assert VideoError("x", frame=3).frame == 3


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "table"])
def test_cli_unopenable_source_still_prints_a_whole_empty_document(tmp_path, fmt):
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n" * 20)
    for path in (fake, tmp_path / "missing.mp4"):
        r = _run(str(path), "--format", fmt)
        assert r.exit_code == 1, r.output
        (error,) = [line for line in r.stderr.splitlines() if line.strip()]
        assert error.startswith("fer-edge: error: ") and path.name in error
        if fmt == "json":
            assert json.loads(r.stdout) == []
        elif fmt == "jsonl":
            assert r.stdout == ""
        elif fmt == "csv":
            assert r.stdout.splitlines() == [r.stdout.splitlines()[0]]
            assert r.stdout.startswith("path,frame,time_s,track,")
        else:
            assert r.stdout.split()[:3] == ["frame", "time_s", "track"]
            assert len(r.stdout.splitlines()) == 1


class _FailingDetector(_CountingDetector):
    """The shipped detector until its third frame, then a model failure."""

    def detect(self, image):
        if len(self.frames) == 2:
            raise ModelError("detector: the model stopped working")
        return super().detect(image)


def test_cli_failure_mid_video_leaves_stdout_a_whole_document(clf, video, monkeypatch):
    failing = Classifier("fast", threads=1, detector=_FailingDetector(clf.detector))
    monkeypatch.setattr("fer_edge.video_cli._load_classifier", lambda _model: failing)
    r = _run(str(video), "--format", "json")
    assert r.exit_code == 1 and "stopped working" in r.stderr
    records = json.loads(r.stdout)  # closed, with the frames analysed before the failure
    assert {rec["frame"] for rec in records} == {0, 1}


def test_a_still_image_is_not_a_video(tmp_path, clf):
    photo = _frames(1)[0]
    stills = []
    for name in ("photo.jpg", "photo.png", "photo.bmp", "photo.tiff", "photo.webp", "photo.gif"):
        photo.save(tmp_path / name)
        stills.append(tmp_path / name)
    # Image sequences FFmpeg reads as one frame, under a video's name too.
    photo.save(tmp_path / "photo-really.mp4", format="PNG")
    stills.append(tmp_path / "photo-really.mp4")
    for path in stills:
        with pytest.raises(VideoError, match="still image") as info:
            clf.analyze_video(path)
        assert path.name in str(info.value) and "fer-edge classify" in str(info.value)
        r = _run(str(path), "--format", "json")
        assert r.exit_code == 1, (path, r.output)
        (error,) = [line for line in r.stderr.splitlines() if line.strip()]
        assert path.name in error and "still image" in error
        assert json.loads(r.stdout) == []
    # An animated GIF is a video of its frames.
    frames = _frames(3)
    frames[0].save(tmp_path / "moving.gif", save_all=True, append_images=frames[1:], duration=100)
    with clf.analyze_video(tmp_path / "moving.gif") as analysis:
        assert len(list(analysis)) == 3
