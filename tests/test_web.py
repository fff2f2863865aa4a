"""web/ in a real browser: the page classifies like the Python runtime.

Headless Chromium loads web/index.html from a local HTTP server (as
``python -m http.server`` would serve it), with one extra script injected at
the end of the page. That script drives the page's own code
(``window.ferEdgeApp``) on test images and POSTs what the page computed back
to the server; the test compares it with fer_edge's preprocessing + ONNX
Runtime on the same files. No webdriver or npm package is needed, only a
Chromium binary; the test skips, saying so, where there is none.
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
        self.sink["event"].set()
        self._send(b"ok", "text/plain")

    def _send(self, body: bytes, kind: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _run_page(tmp_path: Path, driver: str, timeout: float = 180) -> dict:
    """Open web/index.html (plus ``driver``) in headless Chromium; the report it POSTs back."""
    sink: dict = {"event": threading.Event()}
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, tmp=tmp_path, driver=driver, sink=sink))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    profile = tempfile.mkdtemp(prefix="fer-edge-chromium-")
    url = f"http://127.0.0.1:{server.server_address[1]}/web/index.html"
    proc = subprocess.Popen([_chromium() or "chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
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

    session = ort.InferenceSession(str(FAST), providers=["CPUExecutionProvider"])
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
