"""web/ in a real browser: the page classifies like the Python runtime.

Headless Chromium loads web/index.html from a local HTTP server (as
``python -m http.server`` would serve it), with one extra script injected at
the end of the page. That script drives the page's own code
(``window.ferEdgeApp``) on test images and POSTs what the page computed back
to the server; the test compares it with fer_edge's preprocessing + ONNX
Runtime on the same files. The webcam tests run Chromium with its fake camera
(a y4m file the test writes) or with camera access refused. No webdriver or
npm package is needed, only a Chromium binary; the tests skip, saying so, where
there is none.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FAST = REPO / "fer_edge" / "models" / "fast.onnx"
DATA = Path(os.environ.get("FER_EDGE_DATA", REPO.parent / "shared" / "data" / "fer2013"))

#: Probabilities may differ by this much between browser and Python (issue 19).
#: Preprocessing is bit-exact (same luma, same Pillow resize, same float32
#: steps), so what is left is the two ONNX Runtime builds' int8 kernels.
PROB_ATOL = 1e-3
#: Faces the page found itself: its landmarks differ from Python's in the 6th
#: decimal (float32 vs float64 decoding), which can move a few pixels of a
#: rotated crop by one grey level; the int8 model turns that into up to ~0.004
#: (seen: photos/camera.jpg, a face turned 23 degrees). The crop of the *same*
#: box is checked pixel for pixel above, so this looser bound hides no logic error.
DETECTED_PROB_ATOL = 1e-2

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]

# Runs inside the page after app.js: classify each test image, then report.
DRIVER = """
<script>
(async () => {
  const report = {};
  try {
    await window.ferEdgeApp.ready;
    report.modelReadyMs = window.ferEdgeTiming.modelReadyMs;
    report.results = [];
    for (const c of %(cases)s) {
      const r = await window.ferEdgeApp.classifyUrl(c.url, c.box);
      if (report.firstResultMs === undefined) report.firstResultMs = window.ferEdgeTiming.firstResultMs;
      report.results.push({name: c.name, labels: r.labels, probs: r.probs, ms: r.ms});
    }
    // The preprocessed grey pixels themselves, for an exact comparison.
    report.resized = [];
    const size = (await window.ferEdgeApp.ready).info.preprocess.input_size;
    for (const c of %(cases)s) {
      const blob = await (await fetch(c.url)).blob();
      const px = await FerEdge.decodeToRgba(blob);
      let g = FerEdge.rgbaToGray(px.rgba, px.width, px.height);
      let w = px.width, h = px.height;
      if (c.box) { g = FerEdge.cropGray(g, w, c.box); w = c.box.w; h = c.box.h; }
      report.resized.push(Array.from(FerEdge.resizeBilinearPillow(g, w, h, size)));
    }
    const times = [];
    for (let i = 0; i < 20; i++) times.push((await window.ferEdgeApp.classifyUrl(%(first)s)).ms);
    times.sort((a, b) => a - b);
    report.medianMs = times[10];
    await window.ferEdgeApp.openFile(new File(["not an image"], "notes.txt", {type: "text/plain"}));
    report.badFileMessage = document.getElementById("message").textContent;
    report.badFileIsError = document.getElementById("message").className === "error";
  } catch (err) {
    report.error = String(err && err.stack || err);
  }
  await fetch("/__report", {method: "POST", body: JSON.stringify(report)});
})();
</script>
"""


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class _Handler(SimpleHTTPRequestHandler):
    """Serves the repo root, test files under /__tmp/, the page with the driver, and /__report."""

    def __init__(self, *args, tmp: Path, driver: str, sink: dict, **kwargs) -> None:
        self.tmp, self.driver, self.sink = tmp, driver, sink
        super().__init__(*args, directory=str(REPO), **kwargs)

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/__tmp/"):
            body = (self.tmp / self.path.removeprefix("/__tmp/")).read_bytes()
            self._send(body, "application/octet-stream")
        elif self.path == "/web/index.html":
            page = (REPO / "web" / "index.html").read_text()
            self._send(page.replace("</body>", self.driver + "</body>").encode(), "text/html")
        else:
            super().do_GET()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.sink["report"] = json.loads(body)
        self._send(b"ok", "text/plain")  # before the test ends Chromium (no BrokenPipeError noise)
        self.sink["event"].set()

    def _send(self, body: bytes, kind: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _run_page(tmp_path: Path, driver: str, timeout: float = 180, flags: tuple[str, ...] = ()) -> dict:
    """Open web/index.html (plus ``driver``) in headless Chromium (plus ``flags``); the report it POSTs back."""
    sink: dict = {"event": threading.Event()}
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, tmp=tmp_path, driver=driver, sink=sink))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    profile = tempfile.mkdtemp(prefix="fer-edge-chromium-")
    url = f"http://127.0.0.1:{server.server_address[1]}/web/index.html"
    proc = subprocess.Popen([_chromium() or "chromium", *CHROMIUM_FLAGS, *flags, f"--user-data-dir={profile}",
                             "--remote-debugging-port=0", url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        finished = sink["event"].wait(timeout=timeout)
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)
    assert finished, f"the page reported nothing within {timeout:.0f} s; Chromium said: {err.decode()[-2000:]}"
    report = sink["report"]
    assert "error" not in report, report.get("error")
    return report


def _python_probs(image: Image.Image) -> np.ndarray:
    """What fer_edge computes: its own preprocessing, ONNX Runtime, softmax at the model's temperature."""
    import onnxruntime as ort

    from fer_edge.classifier import softmax
    from fer_edge.metadata import ModelInfo
    from fer_edge.preprocess import preprocess
    from fer_edge.providers import session_options

    session = ort.InferenceSession(str(FAST), session_options(0), providers=["CPUExecutionProvider"])
    info = ModelInfo.from_props(session.get_modelmeta().custom_metadata_map)
    x = preprocess(image, info.preprocess)[None]
    return softmax(session.run(None, {session.get_inputs()[0].name: x})[0], info.temperature)[0]


def _face(tmp: Path) -> Image.Image:
    """A real face (a val image) when the data is there, else a synthetic gradient 'face'."""
    files = sorted((DATA / "val" / "happy").glob("*.jpg"))[:1] if DATA.is_dir() else []
    if files:
        return Image.open(files[0]).convert("L")
    yy, xx = np.mgrid[0:48, 0:48]
    return Image.fromarray(((xx * 3 + yy * 2) % 256).astype(np.uint8))


def test_browser_page_matches_python(tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium/Chrome on PATH (Debian: apt-get install -y chromium); "
                    "the browser parity test needs a real browser")
    face = _face(tmp_path)
    # 1: the 48x48 grey face as PNG (upscaling in both axes).
    face.save(tmp_path / "face.png")
    # 2: a colour, non-square, larger photo (downscaling, luma from RGB, stretch).
    big = face.resize((300, 220), Image.Resampling.BICUBIC).convert("RGB")
    tint = np.asarray(big, dtype=np.int16) + np.array([40, -10, -30], dtype=np.int16)
    big = Image.fromarray(np.clip(tint, 0, 255).astype(np.uint8))
    big.save(tmp_path / "photo.png")
    # 3: a tall one (Pillow >= 12 resizes it vertically first; the page must too).
    tall = face.resize((97, 260), Image.Resampling.BICUBIC)
    tall.save(tmp_path / "tall.png")
    box = {"x": 60, "y": 30, "w": 170, "h": 150}
    cases = [
        {"name": "face.png", "url": "/__tmp/face.png", "box": None},
        {"name": "photo.png", "url": "/__tmp/photo.png", "box": None},
        {"name": "photo.png crop", "url": "/__tmp/photo.png", "box": box},
        {"name": "tall.png", "url": "/__tmp/tall.png", "box": None},
    ]
    images = [face, big, big.crop((box["x"], box["y"], box["x"] + box["w"], box["y"] + box["h"])), tall]
    expected = [_python_probs(image) for image in images]
    driver = DRIVER % {"cases": json.dumps(cases), "first": json.dumps(cases[0]["url"])}
    report = _run_page(tmp_path, driver)
    import onnx

    from fer_edge.metadata import ModelInfo

    labels = ModelInfo.from_props({p.key: p.value for p in onnx.load(str(FAST)).metadata_props}).labels
    diffs = []
    for case, want, got in zip(cases, expected, report["results"]):
        assert got["labels"] == labels, case["name"]
        diff = float(np.abs(np.asarray(got["probs"]) - want).max())
        diffs.append(diff)
        assert diff <= PROB_ATOL, f"{case['name']}: browser {got['probs']} vs Python {want.tolist()}"
    from fer_edge.preprocess import resize_gray

    size = int(np.sqrt(len(report["resized"][0])))
    for case, image, got in zip(cases, images, report["resized"]):
        want = resize_gray(image, size)
        mismatched = int(np.sum(np.asarray(got, dtype=np.uint8).reshape(size, size) != want))
        assert mismatched == 0, f"{case['name']}: {mismatched} resized pixels differ from Pillow's"
    assert report["badFileIsError"] and "not a readable image" in report["badFileMessage"]
    print(f"\nbrowser: model ready {report['modelReadyMs']:.0f} ms after page start, first result "
          f"{report['firstResultMs']:.0f} ms, fast model {report['medianMs']:.2f} ms/face (WASM, 1 thread); "
          f"max |prob diff| per image {[f'{d:.1e}' for d in diffs]}")


# --- face detection and face crops (web/blazeface.js, issue 19) ---------------

#: Detected boxes (x, y, w, h, integers as fer_edge rounds them) and landmarks
#: may differ by this many pixels, and scores by FACE_SCORE_ATOL, between the
#: page and BlazeFace().detect. The detector's input is bit-exact (checked
#: below), so what differs is the float32 arithmetic of the two ONNX Runtime
#: builds (WASM vs native CPU kernels), which can move a rounded box by a pixel.
FACE_BOX_TOL_PX = 2
FACE_SCORE_ATOL = 0.01

# Runs inside the page: for each image, what a dropped file gets (analyzeUrl:
# detection, crop, classification), the detector's raw boxes with landmarks,
# and the page's crop of *Python's* boxes (so the crop port is checked on its
# own, exactly, whatever the detector does); then detector inputs and timing.
FACE_DRIVER = """
<script>
(async () => {
  const report = {};
  try {
    const model = await window.ferEdgeApp.ready;
    const size = model.info.preprocess.input_size;
    report.results = [];
    for (const c of %(cases)s) {
      const r = await window.ferEdgeApp.analyzeUrl(c.url);
      const item = {name: c.name, detected: r.detected, message: document.getElementById("message").textContent,
                    faces: r.faces.map((f) => ({box: f.box, score: f.score, probs: f.probs, labels: f.labels}))};
      const px = await FerEdge.decodeToRgba(await (await fetch(c.url)).blob());
      const rgb = FerFaces.rgbaToRgb(px.rgba, px.width, px.height);
      item.raw = (await model.detector.detect(px, rgb)).faces;
      item.crops = c.pyBoxes.map((b) => {
        const crop = FerFaces.cropFaceGray(rgb, px.width, px.height, b);
        return Array.from(FerEdge.resizeBilinearPillow(crop.gray, crop.side, crop.side, size));
      });
      report.results.push(item);
    }
    // The detector's input images (each pass resized from the previous one, RGB).
    report.passes = {};
    for (const url of %(passImages)s) {
      const px = await FerEdge.decodeToRgba(await (await fetch(url)).blob());
      let scaled = FerFaces.rgbaToRgb(px.rgba, px.width, px.height);
      let dims = [px.width, px.height];
      report.passes[url] = [];
      for (const [i, p] of FerFaces.passes(px.width, px.height).sort((a, b) => b.scale - a.scale).entries()) {
        scaled = FerFaces.resizeForPass(scaled, dims, p.size, i === 0);
        dims = p.size;
        report.passes[url].push({size: p.size, input: [p.inputW, p.inputH], pad: p.pad, pixels: Array.from(scaled)});
      }
    }
    report.timing = {};
    for (const c of %(timed)s) {
      const runs = [];
      for (let i = 0; i < 7; i++) {
        const r = await window.ferEdgeApp.analyzeUrl(c.url);
        runs.push([r.detectMs, r.classifyMs, r.faces.length]);
      }
      runs.sort((a, b) => (a[0] + a[1]) - (b[0] + b[1]));
      report.timing[c.name] = runs[3];
    }
  } catch (err) {
    report.error = String(err && err.stack || err);
  }
  await fetch("/__report", {method: "POST", body: JSON.stringify(report)});
})();
</script>
"""


def _group_photo() -> Image.Image:
    """Three faces in one picture: upright (RGB), a grey one, one turned 30 degrees; and a cat."""
    from skimage import data

    astronaut = Image.fromarray(data.astronaut())
    group = Image.new("RGB", (1024, 900), (200, 190, 180))
    group.paste(astronaut, (0, 0))
    group.paste(Image.open(REPO / "photos" / "camera.jpg").convert("RGB"), (512, 0))
    group.paste(astronaut.rotate(-30, resample=Image.Resampling.BICUBIC), (0, 420))
    group.paste(Image.open(REPO / "photos" / "chelsea.jpg"), (540, 560))
    return group


def test_browser_faces_match_python(tmp_path: Path) -> None:
    if _chromium() is None:
        pytest.skip("no Chromium/Chrome on PATH (Debian: apt-get install -y chromium); "
                    "the browser face-detection parity test needs a real browser")
    pytest.importorskip("skimage", reason="the test images come from scikit-image's sample data")
    from skimage import data

    from fer_edge import Classifier
    from fer_edge.blazeface import BlazeFace
    from fer_edge.faces import crop_face, eye_angle, needs_detection
    from fer_edge.preprocess import load_image, resize_gray

    # PNGs are decoded identically by Pillow and the browser; the photos/ JPEGs
    # are checked as they are (both sides use libjpeg-turbo).
    Image.fromarray(data.astronaut()).save(tmp_path / "astronaut.png")
    group_photo = _group_photo()
    group_photo.save(tmp_path / "group.png")
    # Larger, odd-sized copies: the first pass reduce()s them by 2 and by 3
    # (REDUCING_GAP), with a partial last row and column, before the filter.
    group_photo.resize((1301, 1143), Image.Resampling.BICUBIC).save(tmp_path / "group-large.png")
    group_photo.resize((1999, 1331), Image.Resampling.BICUBIC).save(tmp_path / "group-wide.png")
    files = {"astronaut.png (skimage)": tmp_path / "astronaut.png", "group.png": tmp_path / "group.png",
             "group-large.png": tmp_path / "group-large.png"}
    for f in sorted((REPO / "photos").iterdir()):
        if f.suffix in (".jpg", ".png"):
            files[f"photos/{f.name}"] = f
    detector = BlazeFace(providers="cpu")
    clf = Classifier("fast", providers="cpu")
    cases, want = [], {}
    for name, path in files.items():
        image = load_image(path)
        boxes = detector.detect(image)
        # The page runs like faces="auto": a face crop (astronaut-face.png) is
        # classified whole, everything else goes through the detector, as "on".
        mode = "on" if needs_detection(image, "auto") else "auto"
        want[name] = {"image": image, "boxes": boxes, "mode": mode, "analysis": clf.analyze(image, faces=mode)}
        url = "/__tmp/" + path.name if path.parent == tmp_path else "/photos/" + path.name
        cases.append({"name": name, "url": url, "pyBoxes": [
            {"x": b.x, "y": b.y, "w": b.w, "h": b.h,
             "landmarks": [{"name": lm.name, "x": lm.x, "y": lm.y} for lm in b.landmarks]} for b in boxes]})
    # The test must see what it claims to: several faces, a rotated crop, a face-free photo.
    assert len(want["group.png"]["boxes"]) == len(want["group-large.png"]["boxes"]) == 3
    assert any(abs(eye_angle(b)) >= 10 for b in want["group.png"]["boxes"])
    assert any(abs(eye_angle(b)) >= 10 for b in want["photos/camera.jpg"]["boxes"])  # a grey one
    assert want["photos/chelsea.jpg"]["boxes"] == []
    timed = [c for c in cases if c["name"] in ("astronaut.png (skimage)", "group.png")]
    pass_images = {"/__tmp/group.png": tmp_path / "group.png", "/__tmp/group-large.png": tmp_path / "group-large.png",
                   "/__tmp/group-wide.png": tmp_path / "group-wide.png"}
    driver = FACE_DRIVER % {"cases": json.dumps(cases), "passImages": json.dumps(list(pass_images)),
                            "timed": json.dumps(timed)}
    report = _run_page(tmp_path, driver, timeout=300)

    # 1. The detector's input images are Pillow's, pixel for pixel: the first
    # pass with reducing_gap (reduce, then the filter), the others from the previous one.
    from fer_edge.blazeface import REDUCING_GAP

    for url, path in pass_images.items():
        image = load_image(path)
        passes = sorted(detector._passes(image.width, image.height), key=lambda q: -q.scale)
        assert [p["size"] for p in report["passes"][url]] == [list(p.size) for p in passes]
        scaled = image
        for i, (p, got) in enumerate(zip(passes, report["passes"][url])):
            scaled = scaled.resize(p.size, Image.Resampling.BILINEAR, reducing_gap=REDUCING_GAP if i == 0 else None)
            assert got["input"] == [p.input_w, p.input_h] and got["pad"] == p.pad
            assert np.array_equal(np.asarray(got["pixels"], dtype=np.uint8), np.asarray(scaled).ravel()), \
                f"{url}: detector input {p.size}: the page's resize differs from Pillow's"

    box_diff, score_diff, mark_diff, prob_diff = 0, 0.0, 0.0, 0.0
    for case, got in zip(cases, report["results"]):
        name = case["name"]
        w = want[name]
        # 2. Detection: same faces, boxes within FACE_BOX_TOL_PX, scores within FACE_SCORE_ATOL.
        assert len(got["raw"]) == len(w["boxes"]), f"{name}: page {got['raw']} vs Python {w['boxes']}"
        for g, b in zip(got["raw"], w["boxes"]):
            d = max(abs(g["x"] - b.x), abs(g["y"] - b.y), abs(g["w"] - b.w), abs(g["h"] - b.h))
            box_diff = max(box_diff, d)
            score_diff = max(score_diff, abs(g["score"] - b.score))
            mark_diff = max(mark_diff, max(max(abs(gl["x"] - bl.x), abs(gl["y"] - bl.y))
                                           for gl, bl in zip(g["landmarks"], b.landmarks)))
            assert d <= FACE_BOX_TOL_PX, f"{name}: page box {g} vs Python {b}"
            assert abs(g["score"] - b.score) <= FACE_SCORE_ATOL, f"{name}: page {g['score']} vs {b.score}"
        # 3. The crop of a given box (framing, border repeat, rotation) is Python's, exactly.
        size = clf.spec.input_size
        for b, crop in zip(w["boxes"], got["crops"]):
            expected = resize_gray(crop_face(w["image"], b), size)
            mismatched = int(np.sum(np.asarray(crop, dtype=np.uint8).reshape(size, size) != expected))
            assert mismatched == 0, f"{name}: {mismatched} pixels of the crop of {b} differ from crop_face's"
        # 4. What the page shows: the same faces, boxes and probabilities as Classifier.analyze.
        faces = w["analysis"].faces
        assert got["detected"] == (w["mode"] == "on") and len(got["faces"]) == len(faces), name
        for g, f in zip(got["faces"], faces):
            if w["mode"] == "on":
                gb = g["box"]
                assert max(abs(gb["x"] - f.box[0]), abs(gb["y"] - f.box[1]), abs(gb["w"] - f.box[2]),
                           abs(gb["h"] - f.box[3])) <= FACE_BOX_TOL_PX, f"{name}: {gb} vs {f.box}"
            assert g["labels"] == list(clf.labels)
            py = np.asarray([f.prediction.probabilities[label] for label in clf.labels])
            d = float(np.abs(np.asarray(g["probs"]) - py).max())
            prob_diff = max(prob_diff, d)
            atol = DETECTED_PROB_ATOL if w["mode"] == "on" else PROB_ATOL
            assert d <= atol, f"{name}: page {g['probs']} vs Python {py.tolist()}"
        if w["mode"] == "on" and not faces:
            assert "No face found" in got["message"], got["message"]
    timing = ", ".join(f"{n}: detection {t[0]:.0f} ms + classification {t[1]:.0f} ms ({t[2]} faces)"
                       for n, t in report["timing"].items())
    print(f"\nbrowser faces: max box diff {box_diff} px, landmarks {mark_diff:.2f} px, score {score_diff:.1e}, "
          f"probabilities {prob_diff:.1e}; median of 7 (WASM, 1 thread): {timing}")


# --- the webcam (issue 19) ---------------------------------------------------

#: Chromium's fake camera (--use-file-for-fake-video-capture) plays a y4m file
#: and turns its I420 frames into RGB as BT.601 *limited* range (Y 16..235),
#: as it does a real camera's: a frame written with the full-range formulas
#: came back up to 21 grey levels off. So the frames are written limited range,
#: and Python decodes them back the same way; the page's pixels then differ
#: from Python's decode by rounding only (seen: at most 1 level).
CAMERA_PIXEL_TOL = 2
#: The page's face boxes on a camera frame vs BlazeFace().detect on Python's
#: decode of that y4m frame (pixels within CAMERA_PIXEL_TOL, not identical).
CAMERA_BOX_TOL_PX = 4
CAMERA_FLAGS = ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream")


def _to_i420(image: Image.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y, U, V planes (chroma averaged over 2x2) of an RGB image, BT.601 limited range."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 16 + 219 / 255 * (0.299 * r + 0.587 * g + 0.114 * b)
    u = 128 + 224 / 255 * (-0.168736 * r - 0.331264 * g + 0.5 * b)
    v = 128 + 224 / 255 * (0.5 * r - 0.418688 * g - 0.081312 * b)
    h, w = y.shape
    half = lambda c: c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))  # noqa: E731
    return tuple(np.clip(np.round(c), 0, 255).astype(np.uint8) for c in (y, half(u), half(v)))


def _from_i420(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> Image.Image:
    """The inverse of _to_i420 (chroma repeated over 2x2), as an RGB image."""
    luma = (y.astype(np.float64) - 16) * 255 / 219
    cb, cr = ((c.repeat(2, 0).repeat(2, 1).astype(np.float64) - 128) * 255 / 224 for c in (u, v))
    rgb = np.stack([luma + 1.402 * cr, luma - 0.344136 * cb - 0.714136 * cr, luma + 1.772 * cb], axis=-1)
    return Image.fromarray(np.clip(np.round(rgb), 0, 255).astype(np.uint8))


def _write_y4m(path: Path, frames: list[Image.Image], fps: int) -> None:
    """A YUV4MPEG2 file: header line, then per frame 'FRAME' and the Y, U, V planes."""
    w, h = frames[0].size
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            f.write(b"FRAME\n" + b"".join(plane.tobytes() for plane in _to_i420(frame)))


def _read_y4m(path: Path) -> list[Image.Image]:
    """The frames of a _write_y4m file, decoded back to RGB (what the page should see)."""
    data = path.read_bytes()
    header, _, body = data.partition(b"\n")
    tags = {t[:1]: t[1:] for t in header.decode().split()[1:]}
    w, h = int(tags["W"]), int(tags["H"])
    n, m = w * h, (w // 2) * (h // 2)
    frames, pos = [], 0
    while pos < len(body):
        assert body[pos:pos + 6] == b"FRAME\n", pos
        y = np.frombuffer(body, np.uint8, n, pos + 6).reshape(h, w)
        u = np.frombuffer(body, np.uint8, m, pos + 6 + n).reshape(h // 2, w // 2)
        v = np.frombuffer(body, np.uint8, m, pos + 6 + n + m).reshape(h // 2, w // 2)
        frames.append(_from_i420(y, u, v))
        pos += 6 + n + 2 * m
    return frames


def _camera_frames() -> list[Image.Image]:
    """640x480: a face on the left, the same face on the right, a cat (no face)."""
    astronaut = Image.open(REPO / "photos" / "astronaut.jpg").convert("RGB")
    astronaut = astronaut.resize((400, 400), Image.Resampling.BICUBIC)
    frames = []
    for x in (20, 220):
        frame = Image.new("RGB", (640, 480), (120, 130, 140))
        frame.paste(astronaut, (x, 40))
        frames.append(frame)
    cat = Image.new("RGB", (640, 480), (120, 130, 140))
    cat.paste(Image.open(REPO / "photos" / "chelsea.jpg").convert("RGB"), (95, 90))
    frames.append(cat)
    return frames


#: Grid of mean grey levels the driver uses to tell which y4m frame a camera
#: frame is (the frames differ by far more than the decoding's rounding).
CAMERA_GRID = (8, 6)

# Runs inside the page: press the page's own "Use the webcam" button, then
# analyse camera frames with analyzeFrame (what "Classify this frame" runs)
# until each y4m frame has been seen once; report what the page found, drew and
# said, and the pixels it analysed.
CAMERA_DRIVER = """
<script>
(async () => {
  const report = {frames: []};
  const $ = (id) => document.getElementById(id);
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const [gw, gh] = %(grid)s;
  function grid(px) {  // mean grey per cell, as _grid in the test
    const out = new Float64Array(gw * gh), n = new Float64Array(gw * gh);
    for (let y = 0; y < px.height; y++) for (let x = 0; x < px.width; x++) {
      const i = 4 * (y * px.width + x), c = Math.floor(y * gh / px.height) * gw + Math.floor(x * gw / px.width);
      out[c] += (px.rgba[i] + px.rgba[i + 1] + px.rgba[i + 2]) / 3; n[c]++;
    }
    return Array.from(out, (s, c) => s / n[c]);
  }
  function b64(a) {
    let s = "";
    for (let i = 0; i < a.length; i += 32768) s += String.fromCharCode.apply(null, a.subarray(i, i + 32768));
    return btoa(s);
  }
  try {
    await window.ferEdgeApp.ready;
    $("camera").click();
    for (const t0 = performance.now(); $("snap").hidden && $("message").className !== "error";) {
      if (performance.now() - t0 > 60000) throw new Error("no camera in 60 s: " + $("message").textContent);
      await sleep(100);
    }
    report.startMessage = $("message").textContent;
    if ($("snap").hidden) throw new Error("camera: " + report.startMessage);
    report.video = [$("video").videoWidth, $("video").videoHeight];
    const expected = %(expected)s;
    const seen = new Set();
    report.snaps = 0;
    for (const t0 = performance.now(); seen.size < expected.length && performance.now() - t0 < 120000; report.snaps++) {
      const r = await window.ferEdgeApp.analyzeFrame();
      const px = window.ferEdgeApp.pixels;
      const g = grid(px);
      const dist = expected.map((e) => e.reduce((s, v, i) => s + Math.abs(v - g[i]), 0) / g.length);
      const k = dist.indexOf(Math.min(...dist));
      if (!seen.has(k)) {
        seen.add(k);
        const ctx = $("view").getContext("2d");
        const at = (x, y) => Array.from(ctx.getImageData(x, y, 1, 1).data);
        report.frames.push({
          index: k, gridDistance: dist, width: px.width, height: px.height, rgba: b64(px.rgba),
          canvas: [$("view").width, $("view").height],
          message: $("message").textContent, isError: $("message").className === "error",
          rows: $("probs").rows.length,
          faces: r.faces.map((f) => ({box: f.box, score: f.score, labels: f.labels, probs: f.probs, top: f.top,
            // what drawBox drew: the box's left and right edges, half-way down
            edges: [at(f.box.x + 1, f.box.y + (f.box.h >> 1)), at(f.box.x + f.box.w - 2, f.box.y + (f.box.h >> 1))]})),
        });
      }
      await sleep(200);
    }
  } catch (err) {
    report.error = String(err && err.stack || err);
  }
  await fetch("/__report", {method: "POST", body: JSON.stringify(report)});
})();
</script>
"""


def _grid(image: Image.Image) -> list[float]:
    """CAMERA_DRIVER's grid(): mean of R, G, B per cell of a CAMERA_GRID grid."""
    gw, gh = CAMERA_GRID
    a = np.asarray(image.convert("RGB"), dtype=np.float64).mean(axis=2)
    h, w = a.shape
    rows = np.arange(h) * gh // h
    cols = np.arange(w) * gw // w
    return [float(a[np.ix_(rows == r, cols == c)].mean()) for r in range(gh) for c in range(gw)]


def _box_dist(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Largest difference between two (x, y, w, h) boxes, in pixels."""
    return max(abs(p - q) for p, q in zip(a, b))


def test_browser_webcam_matches_python(tmp_path: Path) -> None:
    """The webcam path on Chromium's fake camera: frames analysed, faces boxed and labelled as in Python."""
    if _chromium() is None:
        pytest.skip("no Chromium/Chrome on PATH (Debian: apt-get install -y chromium); "
                    "the webcam test needs a real browser (its fake camera)")
    import base64

    from fer_edge import Classifier
    from fer_edge.blazeface import BlazeFace

    originals = _camera_frames()
    _write_y4m(tmp_path / "camera.y4m", originals, fps=1)
    decoded = _read_y4m(tmp_path / "camera.y4m")
    detector = BlazeFace(providers="cpu")
    clf = Classifier("fast", providers="cpu")
    want = [{"boxes": detector.detect(image), "analysis": clf.analyze(image, faces="on")} for image in decoded]
    # The test must see what it claims to: one face per face frame, none in the cat's.
    assert [len(w["boxes"]) for w in want] == [1, 1, 0], [w["boxes"] for w in want]
    driver = CAMERA_DRIVER % {"grid": json.dumps(CAMERA_GRID), "expected": json.dumps([_grid(f) for f in decoded])}
    report = _run_page(tmp_path, driver, timeout=300,
                       flags=(*CAMERA_FLAGS, f"--use-file-for-fake-video-capture={tmp_path / 'camera.y4m'}"))
    assert report["startMessage"].startswith("Camera on"), report["startMessage"]
    # Chromium may scale a fake camera's frames; then Python's decode would not be the page's frame.
    assert report["video"] == list(originals[0].size), f"video {report['video']} vs y4m {originals[0].size}"
    assert sorted(f["index"] for f in report["frames"]) == list(range(len(decoded))), \
        f"frames seen {[f['index'] for f in report['frames']]} in {report['snaps']} snaps"

    pixel_diff, box_diff, exact_box_diff, orig_box_diff, prob_diff, decoded_prob_diff = 0, 0, 0, 0, 0.0, 0.0
    labels = []
    for got in sorted(report["frames"], key=lambda f: f["index"]):
        k = got["index"]
        name = f"camera frame {k}"
        assert [got["width"], got["height"]] == report["video"] == got["canvas"], name
        page = Image.fromarray(np.frombuffer(base64.b64decode(got["rgba"]), np.uint8)
                               .reshape(got["height"], got["width"], 4)[..., :3].copy())
        # 1. The page analysed the y4m frame (decoded like Python, to rounding).
        d = int(np.abs(np.asarray(page, dtype=np.int16) - np.asarray(decoded[k], dtype=np.int16)).max())
        pixel_diff = max(pixel_diff, d)
        assert d <= CAMERA_PIXEL_TOL, f"{name}: the page's frame differs from the y4m's by up to {d} levels"
        # 2. The same faces as Python, at the same place; the same labels.
        w = want[k]
        faces = w["analysis"].faces
        assert len(got["faces"]) == len(w["boxes"]) == len(faces), f"{name}: page {got['faces']} vs Python {faces}"
        exact = clf.analyze(page, faces="on").faces  # Python on the page's own pixels
        assert len(exact) == len(faces), name
        placed = detector.detect(originals[k])  # where the face is in the picture before YUV
        for g, b, f, e, o in zip(got["faces"], w["boxes"], faces, exact, placed):
            gb = g["box"]
            box = (gb["x"], gb["y"], gb["w"], gb["h"])
            d_decoded, d_exact = _box_dist(box, (b.x, b.y, b.w, b.h)), _box_dist(box, e.box)
            box_diff, exact_box_diff = max(box_diff, d_decoded), max(exact_box_diff, d_exact)
            orig_box_diff = max(orig_box_diff, _box_dist(box, (o.x, o.y, o.w, o.h)))
            assert d_decoded <= CAMERA_BOX_TOL_PX, f"{name}: page box {gb} vs Python {b}"
            assert d_exact <= FACE_BOX_TOL_PX, f"{name}: page box {gb} vs Python on its pixels {e.box}"
            assert g["labels"] == list(clf.labels)
            label = g["labels"][g["top"]]
            labels.append(f"{label} {g['probs'][g['top']]:.4f}")
            assert label == f.prediction.label == e.prediction.label, \
                f"{name}: page {label} {g['probs']} vs Python {f.prediction} / on its pixels {e.prediction}"
            py = np.asarray([e.prediction.probabilities[c] for c in clf.labels])
            d = float(np.abs(np.asarray(g["probs"]) - py).max())
            prob_diff = max(prob_diff, d)
            assert d <= DETECTED_PROB_ATOL, f"{name}: page {g['probs']} vs Python {py.tolist()}"
            py_decoded = np.asarray([f.prediction.probabilities[c] for c in clf.labels])
            decoded_prob_diff = max(decoded_prob_diff, float(np.abs(np.asarray(g["probs"]) - py_decoded).max()))
            # 3. What the page drew: drawBox's green frame at the box's edges.
            assert g["edges"] == [[0, 170, 0, 255]] * 2, f"{name}: no box drawn at {gb}: {g['edges']}"
        # 4. What it said: the face count, or that there is none.
        if faces:
            assert got["message"].startswith("1 face found") and got["rows"] == 2, (name, got["message"])
        else:
            assert got["message"].startswith("No face found") and not got["isError"], (name, got["message"])
    print(f"\nbrowser webcam: video {report['video'][0]}x{report['video'][1]}, {len(report['frames'])} frames "
          f"seen in {report['snaps']} snaps; page frame vs y4m decode max {pixel_diff} levels; boxes vs Python on "
          f"the y4m decode {box_diff} px, on the page's pixels {exact_box_diff} px, on the picture before YUV "
          f"{orig_box_diff} px; labels {labels}, as Python's; max |prob diff| on the same pixels {prob_diff:.1e}, "
          f"vs Python on the y4m decode {decoded_prob_diff:.1e}")


# Runs inside the page: press "Use the webcam" at once (before the models are
# ready), where Chromium refuses camera access; report the page's message then
# and after the models are ready (the "Models ready" line must not hide it).
DENIED_DRIVER = """
<script>
(async () => {
  const report = {};
  const $ = (id) => document.getElementById(id);
  try {
    let readyFirst = false;
    window.ferEdgeApp.ready.then(() => { readyFirst = report.refused === undefined; }, () => {});
    $("camera").click();
    for (const t0 = performance.now(); $("message").className !== "error";) {
      if (performance.now() - t0 > 60000) throw new Error("no error shown in 60 s: " + $("message").textContent);
      await new Promise((r) => setTimeout(r, 50));
    }
    report.refused = $("message").textContent;
    await window.ferEdgeApp.ready;
    report.readyFirst = readyFirst;
    report.after = $("message").textContent;
    report.afterIsError = $("message").className === "error";
    report.snapHidden = $("snap").hidden;
  } catch (err) {
    report.error = String(err && err.stack || err);
  }
  await fetch("/__report", {method: "POST", body: JSON.stringify(report)});
})();
</script>
"""


def test_browser_denied_camera_message(tmp_path: Path) -> None:
    """A refused camera gets the page's 'denied' message, and it stays once the models are ready."""
    if _chromium() is None:
        pytest.skip("no Chromium/Chrome on PATH (Debian: apt-get install -y chromium); "
                    "the denied-camera test needs a real browser")
    # A (fake) camera is there, but the permission prompt is answered "no".
    report = _run_page(tmp_path, DENIED_DRIVER, timeout=180,
                       flags=("--use-fake-device-for-media-stream", "--deny-permission-prompts"))
    denied = "Camera access was denied. Allow it in the browser's site settings, or drop a photo instead."
    assert report["refused"] == denied, report
    assert report["after"] == denied and report["afterIsError"], report
    assert report["snapHidden"], "the 'Classify this frame' button shows without a camera"
    print(f"\nbrowser denied camera: {report['refused']!r} (models ready first: {report['readyFirst']})")
