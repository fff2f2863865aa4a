// Face detection and face crops in the browser: fer_edge/blazeface.py and
// fer_edge/faces.py, ported line by line so the page finds the same faces,
// cuts the same crops and so gives the same probabilities as the Python runtime.
//
//   * detector input: the image resized with Pillow's BILINEAR (resizePillow
//     in fer.js, RGB), the passes in the same order and sizes, each from the
//     previous one, the first after Pillow's reduce() as reducing_gap does it
//     (resizePillowReducing), scaled to [-1, 1] in float32 and padded with -1;
//   * post-processing: the same anchors, decoding, score threshold and
//     MediaPipe's weighted NMS, in float64 like numpy;
//   * crop: the FER-2013 framing (FRAME_SCALE, FRAME_OFFSET_Y), border pixels
//     repeated past the image, and above MIN_ROTATION_DEG of eye-line tilt a
//     rotation that reproduces Pillow's Image.transform(AFFINE, BILINEAR).
// Python's round() rounds halves to even; pyRound does the same, because
// Math.round would move a box by a pixel on every .5.
// The constants are copies: tests/test_web.py compares this file's results
// with the Python code's, so a change there that is not made here fails it.
"use strict";

(function (global) {
  // fer_edge/blazeface.py
  const STRIDE = 4;
  const INPUT_MULTIPLE = 32;
  const MIN_SCORE = 0.65;
  const MIN_SUPPRESSION_IOU = 0.3;
  const RAW_SCORE_CLIP = 80.0;
  const MIN_FACE_INPUT_PX = 20;
  const COARSE_SIDE = 128;
  const COARSE_PAD = 32;
  const FINE_SIDE = 384;
  const FINE_MIN_IMAGE_SIDE = 192;
  const MAX_UPSCALE = 2.0;
  const MAX_FINE_SIDE = 2048;
  const REDUCING_GAP = 1.5;
  const LANDMARK_NAMES = ["right_eye", "left_eye", "nose_tip", "mouth_center",
                          "right_ear_tragion", "left_ear_tragion"];
  const N_POINTS = LANDMARK_NAMES.length;
  // fer_edge/faces.py
  const CROP_MAX_SIDE = 160;
  const CROP_ASPECT_RANGE = [0.8, 1.25];
  const FRAME_SCALE = 1.2;
  const FRAME_OFFSET_Y = -0.036;
  const MIN_ROTATION_DEG = 10.0;

  /** Python's round(): halves go to the even neighbour. */
  function pyRound(v) {
    const f = Math.floor(v);
    const d = v - f;
    if (d > 0.5) return f + 1;
    if (d < 0.5) return f;
    return f % 2 === 0 ? f : f + 1;
  }

  function roundUp(n, multiple) {
    return Math.max(multiple, Math.ceil(n / multiple) * multiple);
  }

  /** RGBA (canvas) -> packed RGB: Pillow's convert("RGB") drops alpha the same way. */
  function rgbaToRgb(rgba, width, height) {
    const rgb = new Uint8Array(width * height * 3);
    for (let i = 0, j = 0; i < rgb.length; i += 3, j += 4) {
      rgb[i] = rgba[j];
      rgb[i + 1] = rgba[j + 1];
      rgb[i + 2] = rgba[j + 2];
    }
    return rgb;
  }

  /** Packed RGB -> 8-bit luma, as Pillow's convert("L") (see rgbaToGray in fer.js). */
  function rgbToGray(rgb, n) {
    const gray = new Uint8Array(n);
    for (let i = 0, j = 0; i < n; i++, j += 3) {
      gray[i] = (rgb[j] * 19595 + rgb[j + 1] * 38470 + rgb[j + 2] * 7471 + 0x8000) >>> 16;
    }
    return gray;
  }

  /** needs_detection(image, "auto"): small, square-ish images are face crops already. */
  function looksLikeFaceCrop(width, height) {
    const ratio = width / height;
    return Math.max(width, height) <= CROP_MAX_SIDE &&
      CROP_ASPECT_RANGE[0] <= ratio && ratio <= CROP_ASPECT_RANGE[1];
  }

  /** BlazeFace._passes with min_face=None: where the image lies in each model input. */
  function passes(width, height) {
    const longSide = Math.max(width, height);
    const out = [];
    const scale = COARSE_SIDE / longSide;
    let size = [Math.max(1, pyRound(width * scale)), Math.max(1, pyRound(height * scale))];
    out.push({ scale, pad: COARSE_PAD, size,
               inputW: roundUp(size[0] + 2 * COARSE_PAD, INPUT_MULTIPLE),
               inputH: roundUp(size[1] + 2 * COARSE_PAD, INPUT_MULTIPLE) });
    const fine = longSide > FINE_MIN_IMAGE_SIDE ? Math.min(FINE_SIDE / longSide, 1.0) : 0.0;
    if (fine > scale * 1.5) { // otherwise the coarse pass covers it
      size = [Math.max(1, pyRound(width * fine)), Math.max(1, pyRound(height * fine))];
      out.push({ scale: fine, pad: 0, size, inputW: roundUp(size[0], INPUT_MULTIPLE),
                 inputH: roundUp(size[1], INPUT_MULTIPLE) });
    }
    return out;
  }

  /**
   * _resize_for_pass: packed RGB resized to a pass's size as Pillow's BILINEAR,
   * the first (largest) pass with reducing_gap=REDUCING_GAP (reduce, then the
   * filter), later ones from the previous pass without (exported for the parity test).
   */
  function resizeForPass(rgb, size, outSize, first) {
    const fer = global.FerEdge;
    if (first) return fer.resizePillowReducing(rgb, size[0], size[1], outSize[0], outSize[1], 3, REDUCING_GAP);
    return fer.resizePillow(rgb, size[0], size[1], outSize[0], outSize[1], 3);
  }

  /** IoU of boxes i and j of an (N, 16) float64 array. */
  function iou(d, i, j, w) {
    const a = i * w;
    const b = j * w;
    const ix0 = Math.max(d[a], d[b]);
    const iy0 = Math.max(d[a + 1], d[b + 1]);
    const ix1 = Math.min(d[a + 2], d[b + 2]);
    const iy1 = Math.min(d[a + 3], d[b + 3]);
    const inter = Math.max(ix1 - ix0, 0) * Math.max(iy1 - iy0, 0);
    const union = (d[a + 2] - d[a]) * (d[a + 3] - d[a + 1]) + (d[b + 2] - d[b]) * (d[b + 3] - d[b + 1]) - inter;
    return union > 0 ? inter / Math.max(union, 1e-12) : 0.0;
  }

  /**
   * MediaPipe's weighted NMS (blazeface.weighted_nms): overlapping boxes are
   * averaged into the best one, weighted by score; it keeps the best score.
   */
  function weightedNms(dets, scores, width, iouThreshold = MIN_SUPPRESSION_IOU) {
    // Stable descending sort, as np.argsort(-scores, kind="stable").
    let remaining = Array.from(scores.keys()).sort((a, b) => scores[b] - scores[a] || a - b);
    const outDets = [];
    const outScores = [];
    while (remaining.length) {
      const top = remaining[0];
      const overlap = remaining.map((r) => iou(dets, top, r, width));
      let group = remaining.filter((_, k) => overlap[k] > iouThreshold);
      if (group.length === 0) group = [top]; // a zero-area box overlaps nothing, itself included
      const merged = new Float64Array(width);
      let total = 0;
      for (const g of group) total += scores[g];
      for (let c = 0; c < width; c++) {
        let s = 0;
        for (const g of group) s += dets[g * width + c] * scores[g];
        merged[c] = s / total;
      }
      outDets.push(merged);
      outScores.push(scores[top]);
      remaining = remaining.filter((r, k) => overlap[k] <= iouThreshold && r !== top);
    }
    return { dets: outDets, scores: outScores };
  }

  /** The detector: an onnxruntime-web session on the shipped BlazeFace ONNX file. */
  class BlazeFace {
    constructor(session, minScore) {
      this.session = session;
      this.minScore = minScore;
      this.input = session.inputNames[0];
    }

    static async load(url, ort, minScore = MIN_SCORE) {
      const response = await fetch(url);
      if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
      const bytes = new Uint8Array(await response.arrayBuffer());
      const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
      const outs = session.outputNames;
      if (session.inputNames.length !== 1 || !outs.includes("regressors") || !outs.includes("scores")) {
        throw new Error(`${url}: not a BlazeFace model from tools/convert_blazeface.py ` +
                        `(inputs ${session.inputNames}, outputs ${outs})`);
      }
      return new BlazeFace(session, minScore);
    }

    /** The float32 NHWC input of one pass (exported for the parity test). */
    static inputTensorData(scaled, p) {
      const x = new Float32Array(p.inputH * p.inputW * 3).fill(-1.0); // padding black, as MediaPipe's
      const k = Math.fround(1 / 127.5);
      const [w, h] = p.size;
      for (let y = 0; y < h; y++) {
        for (let i = 0; i < w * 3; i++) {
          // numpy: multiply in float32 by float32(1/127.5), then -= 1.0 in float32.
          x[((y + p.pad) * p.inputW + p.pad) * 3 + i] = Math.fround(Math.fround(scaled[y * w * 3 + i] * k) - 1.0);
        }
      }
      return x;
    }

    /** One pass: candidates in image pixels whose score is at least minScore. */
    async run(scaled, p) {
      const ort = global.ort;
      const data = BlazeFace.inputTensorData(scaled, p);
      const out = await this.session.run({ [this.input]: new ort.Tensor("float32", data, [1, p.inputH, p.inputW, 3]) });
      const raw = out.regressors.data;
      const logits = out.scores.data;
      const gridW = p.inputW / STRIDE;
      const anchors = (p.inputH / STRIDE) * gridW;
      if (logits.length !== anchors) {
        throw new Error(`face detector: ${logits.length} outputs for a ${p.inputW}x${p.inputH} input, expected ${anchors}`);
      }
      const width = 4 + 2 * N_POINTS;
      const dets = [];
      const scores = [];
      for (let a = 0; a < anchors; a++) {
        const l = Math.min(Math.max(logits[a], -RAW_SCORE_CLIP), RAW_SCORE_CLIP);
        const score = 1.0 / (1.0 + Math.exp(-l));
        if (score < this.minScore) continue;
        // Anchor centres in input pixels; row-major like the output.
        const ax = ((a % gridW) + 0.5) * STRIDE;
        const ay = (Math.floor(a / gridW) + 0.5) * STRIDE;
        const r = a * 16;
        const cx = ax + raw[r];
        const cy = ay + raw[r + 1];
        const hw = raw[r + 2] / 2;
        const hh = raw[r + 3] / 2;
        const row = [cx - hw, cy - hh, cx + hw, cy + hh];
        for (let k = 0; k < N_POINTS; k++) row.push(ax + raw[r + 4 + 2 * k], ay + raw[r + 5 + 2 * k]);
        // Input pixels -> image pixels (undo the padding, then the scaling).
        for (let c = 0; c < width; c++) dets.push((row[c] - p.pad) / p.scale);
        scores.push(score);
      }
      return { dets, scores };
    }

    /**
     * Find faces in decoded pixels ({rgba, width, height}). Returns boxes
     * {x, y, w, h, score, landmarks: [{name, x, y}]} in image pixels, largest
     * first, [] when there is none; plus ms (the detector runs alone).
     */
    async detect(pixels, rgb) {
      const { width, height } = pixels;
      if (width < 1 || height < 1) return { faces: [], ms: 0 };
      let scaled = rgb || rgbaToRgb(pixels.rgba, width, height);
      let size = [width, height];
      const allDets = [];
      const allScores = [];
      let ms = 0;
      // Largest pass first, each resized from the previous one (as Python does).
      const ordered = passes(width, height).sort((a, b) => b.scale - a.scale);
      for (const [i, p] of ordered.entries()) {
        if (size[0] !== p.size[0] || size[1] !== p.size[1]) {
          scaled = resizeForPass(scaled, size, p.size, i === 0);
          size = p.size;
        }
        const t0 = performance.now();
        const found = await this.run(scaled, p);
        ms += performance.now() - t0;
        allDets.push(...found.dets);
        allScores.push(...found.scores);
      }
      if (!allScores.length) return { faces: [], ms };
      const width16 = 4 + 2 * N_POINTS;
      const merged = weightedNms(Float64Array.from(allDets), allScores, width16);
      const faces = [];
      merged.dets.forEach((row, k) => {
        const w = pyRound(row[2] - row[0]);
        const h = pyRound(row[3] - row[1]);
        if (w < 1 || h < 1) return;
        faces.push({
          x: pyRound(row[0]), y: pyRound(row[1]), w, h, score: merged.scores[k],
          landmarks: LANDMARK_NAMES.map((name, i) => ({ name, x: row[4 + 2 * i], y: row[5 + 2 * i] })),
        });
      });
      faces.sort((a, b) => b.w * b.h - a.w * a.h || a.y - b.y || a.x - b.x);
      return { faces, ms };
    }
  }

  // --- the face crop (fer_edge/faces.py) -------------------------------------

  /** Degrees the face is turned from upright, from its eyes; null without them. */
  function eyeAngle(box) {
    const right = (box.landmarks || []).find((l) => l.name === "right_eye");
    const left = (box.landmarks || []).find((l) => l.name === "left_eye");
    if (!right || !left || (right.x === left.x && right.y === left.y)) return null;
    // As math.degrees / math.radians: multiply by the constant ratio (same rounding).
    return Math.atan2(left.y - right.y, left.x - right.x) * (180 / Math.PI);
  }

  /** face_frame: the square FER-2013-style frame (left, top, side) before rotation. */
  function faceFrame(box) {
    const side = Math.max(1, pyRound(Math.max(box.w, box.h) * FRAME_SCALE));
    const left = pyRound(box.x + box.w / 2 - side / 2);
    const top = pyRound(box.y + box.h / 2 + FRAME_OFFSET_Y * side - side / 2);
    return [left, top, side];
  }

  /**
   * _padded_crop on packed RGB: any rectangle, border pixels repeated outside
   * the image (more face or background, not a black edge the model never saw).
   */
  function paddedCrop(rgb, width, height, left, top, right, bottom) {
    const w = right - left;
    const h = bottom - top;
    const out = new Uint8Array(w * h * 3);
    for (let y = 0; y < h; y++) {
      const sy = Math.min(Math.max(top + y, 0), height - 1);
      for (let x = 0; x < w; x++) {
        const sx = Math.min(Math.max(left + x, 0), width - 1);
        const s = (sy * width + sx) * 3;
        const d = (y * w + x) * 3;
        out[d] = rgb[s];
        out[d + 1] = rgb[s + 1];
        out[d + 2] = rgb[s + 2];
      }
    }
    return out;
  }

  /**
   * Pillow's Image.transform(size, AFFINE, (a..f), BILINEAR) on packed RGB
   * (libImaging/Geometry.c: affine_transform + bilinear_filter32RGB): output
   * pixel centres map through the matrix; samples outside the source are 0;
   * interpolation in double, truncated to uint8 (no rounding, as in C).
   */
  function affineBilinear(src, sw, sh, outW, outH, m) {
    const [a, b, c, d, e, f] = m;
    const out = new Uint8Array(outW * outH * 3);
    for (let y = 0; y < outH; y++) {
      for (let x = 0; x < outW; x++) {
        let xin = a * (x + 0.5) + b * (y + 0.5) + c;
        let yin = d * (x + 0.5) + e * (y + 0.5) + f;
        if (xin < 0.0 || xin >= sw || yin < 0.0 || yin >= sh) continue; // stays 0 (fill)
        xin -= 0.5;
        yin -= 0.5;
        const x0 = Math.floor(xin);
        const y0 = Math.floor(yin);
        const dx = xin - x0;
        const dy = yin - y0;
        const xa = Math.min(Math.max(x0, 0), sw - 1) * 3;
        const xb = Math.min(Math.max(x0 + 1, 0), sw - 1) * 3;
        const rowA = Math.min(Math.max(y0, 0), sh - 1) * sw * 3;
        const hasB = y0 + 1 >= 0 && y0 + 1 < sh;
        const rowB = (y0 + 1) * sw * 3;
        for (let ch = 0; ch < 3; ch++) {
          const p = src[rowA + xa + ch];
          let v1 = p + (src[rowA + xb + ch] - p) * dx;
          let v2 = v1;
          if (hasB) {
            const q = src[rowB + xa + ch];
            v2 = q + (src[rowB + xb + ch] - q) * dx;
          }
          v1 = v1 + (v2 - v1) * dy;
          out[(y * outW + x) * 3 + ch] = Math.trunc(v1);
        }
      }
    }
    return out;
  }

  /**
   * crop_face, then to grey: the face cut out square with FER-2013's framing,
   * turned upright by its eye line when tilted by MIN_ROTATION_DEG or more.
   * Rotation is done on RGB and luma taken after it, as Python does (the
   * truncation per channel makes the order matter). Returns {gray, side}.
   */
  function cropFaceGray(rgb, width, height, box, align = true) {
    if (box.w < 1 || box.h < 1) throw new Error(`face box ${JSON.stringify(box)} has no area`);
    const [left, top, side] = faceFrame(box);
    const angle = align ? eyeAngle(box) : null;
    if (angle === null || Math.abs(angle) < MIN_ROTATION_DEG) {
      return { gray: rgbToGray(paddedCrop(rgb, width, height, left, top, left + side, top + side), side * side), side };
    }
    const rad = angle * (Math.PI / 180);
    const cos = Math.cos(rad);
    const sin = Math.sin(rad);
    // The frame's offset is along the face's own chin direction: R (0, offset).
    const offset = FRAME_OFFSET_Y * side;
    const cx = box.x + box.w / 2 - sin * offset;
    const cy = box.y + box.h / 2 + cos * offset;
    const half = side / 2 * (Math.abs(cos) + Math.abs(sin)) + 2;
    const x0 = Math.floor(cx - half);
    const y0 = Math.floor(cy - half);
    const x1 = Math.ceil(cx + half);
    const y1 = Math.ceil(cy + half);
    const region = paddedCrop(rgb, width, height, x0, y0, x1, y1);
    const a = cos;
    const b = -sin;
    const d = sin;
    const e = cos;
    const c = (cx - x0) - (a + b) * side / 2;
    const f = (cy - y0) - (d + e) * side / 2;
    const turned = affineBilinear(region, x1 - x0, y1 - y0, side, side, [a, b, c, d, e, f]);
    return { gray: rgbToGray(turned, side * side), side };
  }

  global.FerFaces = {
    BlazeFace, passes, resizeForPass, weightedNms, pyRound, rgbaToRgb, looksLikeFaceCrop, eyeAngle, faceFrame,
    cropFaceGray, affineBilinear, MIN_SCORE,
  };
})(typeof window !== "undefined" ? window : globalThis);
