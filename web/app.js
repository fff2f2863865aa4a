// Page wiring for web/index.html: file drop, webcam, face boxes, manual crop box.
// Model logic and preprocessing are in fer.js; face detection and face crops
// in blazeface.js.
"use strict";

(function () {
  // Both models are served from their place in the package (the page is
  // served from the repo root): no copies that could drift from the shipped files.
  const MODEL_URL = "../fer_edge/models/fast.onnx";
  const DETECTOR_URL = "../fer_edge/models/detectors/blazeface_full_range.onnx";
  const $ = (id) => document.getElementById(id);
  const view = $("view");
  const ctx = view.getContext("2d");
  const message = $("message");

  // WASM from the vendored copy only (no CDN); one thread, because a plain
  // static server sends no cross-origin-isolation headers.
  ort.env.wasm.wasmPaths = new URL("vendor/", document.baseURI).href;
  ort.env.wasm.numThreads = 1;

  let pixels = null; // decoded RGBA of the current image
  let drag = null;
  let spoke = false; // the page has said something since "Loading the models…"

  function say(text, isError) {
    spoke = true;
    message.textContent = text;
    message.className = isError ? "error" : "";
  }

  // Sessions are created one after the other: onnxruntime-web's WASM backend
  // initialises once, and two concurrent first creations race on it.
  const ready = FerEdge.FerModel.load(MODEL_URL, ort).then(async (model) => {
    const detector = await FerFaces.BlazeFace.load(DETECTOR_URL, ort);
    // Not over what an earlier click said (e.g. a denied camera, before the models came).
    if (!spoke) {
      say(`Models ready: ${model.info.model_name} (${model.info.precision}; classes ` +
          `${model.info.labels.join(", ")}) and the BlazeFace face detector. Drop a photo or use the webcam.`);
    }
    model.detector = detector;
    return model;
  }).catch((err) => {
    say(`Cannot load the models (${MODEL_URL}, ${DETECTOR_URL}): ${err.message || err}`, true);
    throw err;
  });

  function drawImage() {
    ctx.putImageData(new ImageData(new Uint8ClampedArray(pixels.rgba), pixels.width, pixels.height), 0, 0);
  }

  function drawBox(b, result) {
    const line = Math.max(2, Math.round(Math.min(pixels.width, pixels.height) / 150));
    ctx.lineWidth = line;
    ctx.strokeStyle = "#0a0";
    ctx.strokeRect(b.x + line / 2, b.y + line / 2, b.w - line, b.h - line);
    const label = `${result.labels[result.top]} ${(100 * result.probs[result.top]).toFixed(0)}%`;
    // Label size follows the box (small faces in a group photo get small labels).
    const fontPx = Math.max(12, Math.round(Math.min(b.w, Math.min(pixels.width, pixels.height) / 3) / 6));
    ctx.font = `${fontPx}px sans-serif`;
    const tw = ctx.measureText(label).width + 8;
    const ty = b.y - fontPx - 6 >= 0 ? b.y - fontPx - 6 : Math.max(0, b.y);
    ctx.fillStyle = "#0a0";
    ctx.fillRect(b.x, ty, tw, fontPx + 6);
    ctx.fillStyle = "#fff";
    ctx.fillText(label, b.x + 4, ty + fontPx);
  }

  function table(rows) {
    if (!rows.length) { $("probs").innerHTML = ""; return; }
    const labels = rows[0].result.labels;
    $("probs").innerHTML = `<tr><td></td>${labels.map((l) => `<td>${l}</td>`).join("")}</tr>` +
      rows.map((r) => `<tr><td>${r.name}</td>${r.result.probs.map((p) =>
        `<td>${(100 * p).toFixed(1)}%</td>`).join("")}</tr>`).join("");
  }

  function firstResult() {
    if (window.ferEdgeTiming.firstResultMs === null) window.ferEdgeTiming.firstResultMs = performance.now();
  }

  /** Manual path: classify the whole image or a user-dragged box (no detection). */
  async function classifyPixels(box) {
    const model = await ready;
    const result = await model.classify(pixels, box);
    drawImage();
    drawBox(box || { x: 0, y: 0, w: pixels.width, h: pixels.height }, result);
    table([{ name: box ? "box" : "image", result }]);
    const what = box ? `the ${box.w}x${box.h} box` : "the whole image";
    say(`Classified ${what} in ${result.ms.toFixed(1)} ms.`);
    firstResult();
    return result;
  }

  /**
   * Default path, as Classifier.analyze(image, faces="auto"): a small
   * square-ish image is a face crop and is classified whole; any other image
   * goes through the detector and each face is cut out (framed and turned
   * upright like fer_edge.faces.crop_face) and classified.
   * Returns {detected, faces: [{box, score, landmarks, labels, probs, top}], detectMs, classifyMs}.
   */
  async function analyzePixels() {
    const model = await ready;
    if (FerFaces.looksLikeFaceCrop(pixels.width, pixels.height)) {
      const result = await model.classify(pixels, null);
      drawImage();
      drawBox({ x: 0, y: 0, w: pixels.width, h: pixels.height }, result);
      table([{ name: "image", result }]);
      say(`A ${pixels.width}x${pixels.height} image is taken as a face crop: classified whole ` +
          `in ${result.ms.toFixed(1)} ms.`);
      firstResult();
      return { detected: false, faces: [{ box: null, score: null, ...result }], detectMs: 0, classifyMs: result.ms };
    }
    const t0 = performance.now();
    const rgb = FerFaces.rgbaToRgb(pixels.rgba, pixels.width, pixels.height);
    const { faces } = await model.detector.detect(pixels, rgb);
    const t1 = performance.now();
    const out = [];
    for (const f of faces) {
      const crop = FerFaces.cropFaceGray(rgb, pixels.width, pixels.height, f);
      const result = await model.classifyGray(crop.gray, crop.side, crop.side, null);
      out.push({ box: { x: f.x, y: f.y, w: f.w, h: f.h }, score: f.score, landmarks: f.landmarks, ...result });
    }
    const t2 = performance.now();
    drawImage();
    for (const f of out) drawBox(f.box, f);
    table(out.map((f, i) => ({ name: `face ${i + 1}`, result: f })));
    const ms = `detection ${(t1 - t0).toFixed(0)} ms, classification ${(t2 - t1).toFixed(0)} ms`;
    if (out.length) {
      say(`${out.length} face${out.length > 1 ? "s" : ""} found (${ms}). ` +
          "Drag a box on the image to classify another region by hand.");
    } else {
      say(`No face found in this image (${ms}). Drag a box around a face to classify that region.`);
    }
    firstResult();
    return { detected: true, faces: out, detectMs: t1 - t0, classifyMs: t2 - t1 };
  }

  async function show(newPixels) {
    pixels = newPixels;
    view.width = pixels.width;
    view.height = pixels.height;
    return analyzePixels();
  }

  async function openFile(file) {
    try {
      say(`Reading ${file.name}…`);
      return await show(await FerEdge.decodeToRgba(file));
    } catch (err) {
      say(err.message || String(err), true);
      return null;
    }
  }

  $("file").addEventListener("change", (e) => e.target.files[0] && openFile(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = e.dataTransfer.files[0];
    if (file) openFile(file);
    else say("That was not a file; drop an image file.", true);
  });

  // Manual box: drag on the image; coordinates in image pixels.
  function imagePoint(e) {
    const r = view.getBoundingClientRect();
    return {
      x: Math.min(pixels.width, Math.max(0, Math.round((e.clientX - r.left) * pixels.width / r.width))),
      y: Math.min(pixels.height, Math.max(0, Math.round((e.clientY - r.top) * pixels.height / r.height))),
    };
  }
  const fail = (err) => say(err.message || String(err), true);
  view.addEventListener("mousedown", (e) => { if (pixels) drag = imagePoint(e); });
  view.addEventListener("mouseup", (e) => {
    if (!drag || !pixels) return;
    const p = imagePoint(e);
    const box = { x: Math.min(drag.x, p.x), y: Math.min(drag.y, p.y),
                  w: Math.abs(p.x - drag.x), h: Math.abs(p.y - drag.y) };
    drag = null;
    if (box.w < 8 || box.h < 8) { analyzePixels().catch(fail); return; } // a click: detected faces again
    classifyPixels(box).catch(fail);
  });

  // Webcam: frames are read locally, one on demand.
  const video = $("video");
  /** Turn the camera on; false (with a message saying why) where there is none or access is refused. */
  async function startCamera() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      say("This browser gives no camera access here (a camera needs https:// or http://localhost).", true);
      return false;
    }
    // A second press keeps the stream that is on rather than opening (and leaking) another.
    if (video.srcObject && video.srcObject.active) return true;
    try {
      video.srcObject = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
      await video.play();
      $("snap").hidden = false;
      say("Camera on. Press 'Classify this frame'.");
      return true;
    } catch (err) {
      const denied = err && (err.name === "NotAllowedError" || err.name === "SecurityError");
      say(denied ? "Camera access was denied. Allow it in the browser's site settings, or drop a photo instead."
                 : `No camera available (${err.name || err}).`, true);
      return false;
    }
  }
  /** The current camera frame, at the video's own size, through the same path as a dropped photo. */
  function analyzeFrame() {
    return show(FerEdge.bitmapToRgba(video, video.videoWidth, video.videoHeight));
  }
  $("camera").addEventListener("click", () => { startCamera(); });
  $("snap").addEventListener("click", () => { analyzeFrame().catch(fail); });

  // For tests and timing: time to first result after page load; classify a URL.
  window.ferEdgeTiming = { modelReadyMs: null, firstResultMs: null };
  ready.then(() => { window.ferEdgeTiming.modelReadyMs = performance.now(); }, () => {});
  async function load(url) {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    pixels = await FerEdge.decodeToRgba(await response.blob());
    view.width = pixels.width;
    view.height = pixels.height;
  }
  window.ferEdgeApp = {
    ready,
    /** The manual path: whole image, or `box`. */
    async classifyUrl(url, box) {
      await load(url);
      return classifyPixels(box || null);
    },
    /** What a dropped file gets: face detection (unless a face crop), a box and label per face. */
    async analyzeUrl(url) {
      await load(url);
      return analyzePixels();
    },
    openFile,
    /** What the two webcam buttons do: the same functions. */
    startCamera,
    analyzeFrame,
    /** The image last shown ({rgba, width, height}), e.g. the camera frame analyzeFrame read. */
    get pixels() { return pixels; },
  };
})();
