// fer-edge in the browser: the runtime's preprocessing and model metadata, in plain JS.
//
// Everything here mirrors fer_edge/ (Python) so that the same image gives the
// same probabilities on both sides:
//   * labels and preprocessing come from the model file's own metadata
//     (metadata_props key "fer_edge", JSON), read by parseOnnxMetadata;
//   * grey is Pillow's convert("L") (ITU-R 601-2 luma in 16-bit fixed point);
//   * the resize is Pillow's BILINEAR resample (a triangle filter whose support
//     grows with the downscale factor, 22-bit fixed-point coefficients,
//     horizontal pass then vertical pass with rounding to uint8 in between).
//     A canvas drawImage resize is NOT used: browsers' filters differ from
//     Pillow's and from each other.
// No DOM access here except decoding (decodeToRgba), so app.js and the tests
// share one code path.
"use strict";

(function (global) {
  const METADATA_KEY = "fer_edge";

  // --- ONNX metadata -------------------------------------------------------

  /** Read a protobuf varint at pos; returns [value, nextPos]. */
  function readVarint(bytes, pos) {
    let value = 0;
    let scale = 1;
    for (;;) {
      if (pos >= bytes.length) throw new Error("truncated ONNX file (varint)");
      const b = bytes[pos++];
      value += (b & 0x7f) * scale; // multiplication, not <<: lengths may exceed 2^31
      if (b < 0x80) return [value, pos];
      scale *= 128;
    }
  }

  /** Skip one field of wire type `wire` at pos; returns the position after it. */
  function skipField(bytes, pos, wire) {
    if (wire === 0) return readVarint(bytes, pos)[1];
    if (wire === 1) return pos + 8;
    if (wire === 5) return pos + 4;
    if (wire === 2) {
      const [len, p] = readVarint(bytes, pos);
      return p + len;
    }
    throw new Error(`unsupported protobuf wire type ${wire}`);
  }

  /**
   * The metadata_props of an ONNX ModelProto (field 14: repeated
   * StringStringEntryProto {key = 1, value = 2}), as an object.
   * onnxruntime-web does not expose custom metadata, and a side JSON file
   * could drift from the model, so the model's own bytes are read.
   */
  function parseOnnxMetadata(bytes) {
    const decoder = new TextDecoder();
    const props = {};
    let pos = 0;
    while (pos < bytes.length) {
      const [tag, p] = readVarint(bytes, pos);
      const field = Math.floor(tag / 8);
      const wire = tag & 7;
      if (field === 14 && wire === 2) {
        const [len, start] = readVarint(bytes, p);
        const end = start + len;
        let q = start;
        let key = "";
        let value = "";
        while (q < end) {
          const [t, q2] = readVarint(bytes, q);
          const [n, s] = readVarint(bytes, q2);
          const text = decoder.decode(bytes.subarray(s, s + n));
          if (t >> 3 === 1) key = text;
          else if (t >> 3 === 2) value = text;
          q = s + n;
        }
        props[key] = value;
        pos = end;
      } else {
        pos = skipField(bytes, p, wire);
      }
    }
    return props;
  }

  /** fer-edge's model facts (labels, preprocess...) from an ONNX file's bytes. */
  function modelInfo(bytes) {
    const props = parseOnnxMetadata(bytes);
    if (!(METADATA_KEY in props)) {
      throw new Error(`no '${METADATA_KEY}' metadata: this ONNX file was not exported by fer-edge`);
    }
    const info = JSON.parse(props[METADATA_KEY]);
    const pre = info.preprocess;
    if (!Array.isArray(info.labels) || info.labels.length < 2) throw new Error("metadata has no labels");
    if (pre.color_mode !== "gray3") throw new Error(`colour mode ${pre.color_mode} is not supported here`);
    // As fer_edge.metadata: optional, 1 when absent (files from before calibration);
    // refused when present but unusable, rather than giving NaN probabilities later.
    if (info.temperature === undefined) info.temperature = 1;
    const t = info.temperature;
    if (typeof t !== "number" || !Number.isFinite(t) || t <= 0) {
      throw new Error(`invalid metadata: temperature must be a finite number > 0, got ${JSON.stringify(t)}`);
    }
    return info;
  }

  // --- preprocessing (fer_edge/preprocess.py) -----------------------------

  /** RGBA bytes -> 8-bit luma, exactly as Pillow's convert("L"). */
  function rgbaToGray(rgba, width, height) {
    const gray = new Uint8Array(width * height);
    for (let i = 0, j = 0; i < gray.length; i++, j += 4) {
      // Pillow's L24: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16.
      gray[i] = (rgba[j] * 19595 + rgba[j + 1] * 38470 + rgba[j + 2] * 7471 + 0x8000) >>> 16;
    }
    return gray;
  }

  const PRECISION_BITS = 32 - 8 - 2; // as Pillow's Resample.c for 8-bit images

  /**
   * Pillow's precompute_coeffs for the bilinear filter, then its 8-bit
   * normalisation to fixed point. `span` is the width of the source box
   * (Image.resize's box, from 0): Pillow passes it to C as a float32, so it
   * is rounded the same way here. Returns {bounds: Int32Array(2*out), kk, ksize}.
   */
  function pillowCoeffs(inSize, outSize, span = inSize) {
    const support0 = 1.0; // bilinear
    const scale = Math.fround(span) / outSize;
    const filterscale = Math.max(scale, 1.0);
    const support = support0 * filterscale;
    const ksize = Math.ceil(support) * 2 + 1;
    const bounds = new Int32Array(outSize * 2);
    const kk = new Int32Array(outSize * ksize);
    const k = new Float64Array(ksize);
    for (let xx = 0; xx < outSize; xx++) {
      const center = (xx + 0.5) * scale;
      const ss = 1.0 / filterscale;
      let xmin = Math.trunc(center - support + 0.5);
      if (xmin < 0) xmin = 0;
      let xmax = Math.trunc(center + support + 0.5);
      if (xmax > inSize) xmax = inSize;
      xmax -= xmin;
      let ww = 0.0;
      for (let x = 0; x < xmax; x++) {
        const t = Math.abs((x + xmin - center + 0.5) * ss);
        const w = t < 1.0 ? 1.0 - t : 0.0;
        k[x] = w;
        ww += w;
      }
      for (let x = 0; x < ksize; x++) {
        let v = x < xmax ? (ww !== 0.0 ? k[x] / ww : k[x]) : 0;
        v *= 1 << PRECISION_BITS;
        kk[xx * ksize + x] = v < 0 ? Math.trunc(-0.5 + v) : Math.trunc(0.5 + v);
      }
      bounds[xx * 2] = xmin;
      bounds[xx * 2 + 1] = xmax;
    }
    return { bounds, kk, ksize };
  }

  function clip8(ss) {
    const v = Math.floor(ss / (1 << PRECISION_BITS));
    return v < 0 ? 0 : v > 255 ? 255 : v;
  }

  /**
   * One horizontal pass: rows x inW -> rows x outW, `ch` interleaved 8-bit
   * channels (1: grey; 3: RGB, each channel filtered alone as Pillow does).
   */
  function passH(src, inW, rows, c, outW, ch = 1) {
    const half = 1 << (PRECISION_BITS - 1);
    const out = new Uint8Array(outW * rows * ch);
    for (let yy = 0; yy < rows; yy++) {
      const row = yy * inW * ch;
      for (let xx = 0; xx < outW; xx++) {
        const xmin = c.bounds[xx * 2];
        const xmax = c.bounds[xx * 2 + 1];
        const base = xx * c.ksize;
        for (let b = 0; b < ch; b++) {
          let ss = half;
          for (let x = 0; x < xmax; x++) ss += src[row + (x + xmin) * ch + b] * c.kk[base + x];
          out[(yy * outW + xx) * ch + b] = clip8(ss);
        }
      }
    }
    return out;
  }

  /** One vertical pass: inH x width -> outH x width (`ch` interleaved channels). */
  function passV(src, width, c, outH, ch = 1) {
    const half = 1 << (PRECISION_BITS - 1);
    const rowLen = width * ch;
    const out = new Uint8Array(rowLen * outH);
    for (let yy = 0; yy < outH; yy++) {
      const ymin = c.bounds[yy * 2];
      const ymax = c.bounds[yy * 2 + 1];
      const base = yy * c.ksize;
      for (let i = 0; i < rowLen; i++) {
        let ss = half;
        for (let y = 0; y < ymax; y++) ss += src[(y + ymin) * rowLen + i] * c.kk[base + y];
        out[yy * rowLen + i] = clip8(ss);
      }
    }
    return out;
  }

  /**
   * Resize 8-bit pixels (`ch` interleaved channels) from width x height to
   * outW x outH with Pillow's BILINEAR filter (Image.resize, no
   * reducing_gap): two separable passes with a rounding to uint8 in between,
   * so their order changes the result. Pillow does the horizontal pass first,
   * except (since Pillow 12.x, python-pillow PR 9549) when the height shrinks
   * by more than twice what the width does: in_h > out_h and
   * in_h - out_h > 2 * (in_w - out_w). The rule was checked against Pillow 13
   * on 1,500 random square outputs (0 mismatches); older Pillow always goes
   * horizontal first. tests/test_web.py compares RGB outputs too. `box`:
   * the [width, height] of the source box (Image.resize's box from 0, 0),
   * which resizePillowReducing sets to less than the whole reduced image.
   */
  function resizePillow(src, width, height, outW, outH, ch = 1, box = [width, height]) {
    const [spanW, spanH] = box;
    const fullW = spanW === width;
    const fullH = spanH === height;
    if (width === outW && height === outH && fullW && fullH) return src;
    const h = pillowCoeffs(width, outW, spanW);
    const v = pillowCoeffs(height, outH, spanH);
    if (width === outW && fullW) return passV(src, width, v, outH, ch);
    if (height === outH && fullH) return passH(src, width, height, h, outW, ch);
    const verticalFirst = height > outH && height - outH > 2 * (width - outW);
    if (verticalFirst) return passH(passV(src, width, v, outH, ch), width, outH, h, outW, ch);
    return passV(passH(src, width, height, h, outW, ch), outW, v, outH, ch);
  }

  /** Pillow's division_UINT32(n, 8): 2^32 / (256 n) in float32, truncated. */
  function reduceMultiplier(n) {
    return Math.trunc(Math.fround(4294967296 / (256 * n)));
  }

  /**
   * Pillow's Image.reduce((fx, fy)) on 8-bit pixels (`ch` interleaved
   * channels; libImaging/Reduce.c): each output pixel is the mean of an
   * fx x fy block; when a side is not a multiple of its factor, the last
   * column/row is the mean of the pixels left there (ceil(width / fx) outputs).
   * The mean is rounded as C does it, ((sum + n / 2) * multiplier) >> 24,
   * which is not always round(sum / n): the float32 multiplier decides.
   */
  function reducePillow(src, width, height, fx, fy, ch = 1) {
    const outW = Math.ceil(width / fx);
    const outH = Math.ceil(height / fy);
    const out = new Uint8Array(outW * outH * ch);
    const multipliers = new Float64Array(fx * fy + 1);
    for (let n = 1; n <= fx * fy; n++) multipliers[n] = reduceMultiplier(n);
    const sums = new Float64Array(ch);
    for (let y = 0; y < outH; y++) {
      const y0 = y * fy;
      const y1 = Math.min(y0 + fy, height);
      for (let x = 0; x < outW; x++) {
        const x0 = x * fx;
        const x1 = Math.min(x0 + fx, width);
        const n = (y1 - y0) * (x1 - x0);
        sums.fill(n >> 1);
        for (let yy = y0; yy < y1; yy++) {
          for (let i = (yy * width + x0) * ch, end = (yy * width + x1) * ch; i < end; i += ch) {
            for (let b = 0; b < ch; b++) sums[b] += src[i + b];
          }
        }
        // (sum * multiplier) < 2^32: exact in a double, so >> 24 is a floor division.
        for (let b = 0; b < ch; b++) out[(y * outW + x) * ch + b] = Math.floor(sums[b] * multipliers[n] / 16777216);
      }
    }
    return out;
  }

  /**
   * Image.resize(size, BILINEAR, reducing_gap=gap): when the image shrinks by
   * at least 2 * gap along a side, Pillow first reduce()s it by the whole
   * factor int(in / out / gap) (box means, far cheaper than the filter), then
   * resizes the reduced image with a box of width in / factor, so that the
   * result still maps the whole source image onto the output, exactly.
   */
  function resizePillowReducing(src, width, height, outW, outH, ch, gap) {
    const fx = Math.trunc(width / outW / gap) || 1;
    const fy = Math.trunc(height / outH / gap) || 1;
    if (fx === 1 && fy === 1) return resizePillow(src, width, height, outW, outH, ch);
    const reduced = reducePillow(src, width, height, fx, fy, ch);
    return resizePillow(reduced, Math.ceil(width / fx), Math.ceil(height / fy), outW, outH, ch,
                        [width / fx, height / fy]);
  }

  /** An 8-bit grey image resized to size x size as Pillow's BILINEAR (see resizePillow). */
  function resizeBilinearPillow(gray, width, height, size) {
    return resizePillow(gray, width, height, size, size, 1);
  }

  /** uint8 (S, S) grey -> float32 (1, 3, S, S): (x / 255 - mean[c]) / std[c], as normalize(). */
  function normalize(gray, pre) {
    const s = pre.input_size;
    const plane = s * s;
    const out = new Float32Array(3 * plane);
    for (let c = 0; c < 3; c++) {
      // float32 steps, as numpy does on float32 arrays in fer_edge.preprocess.normalize.
      const mean = Math.fround(pre.mean[c]);
      const std = Math.fround(pre.std[c]);
      for (let i = 0; i < plane; i++) {
        out[c * plane + i] = Math.fround(Math.fround(Math.fround(gray[i] / 255) - mean) / std);
      }
    }
    return out;
  }

  /**
   * Row softmax of logits / temperature in float64 (fer_edge.classifier.softmax);
   * the temperature is the model's calibration (metadata "temperature").
   */
  function softmax(logits, temperature = 1) {
    const z = Array.from(logits, (v) => v / temperature);
    const m = Math.max(...z);
    const e = z.map((v) => Math.exp(v - m));
    const sum = e.reduce((a, b) => a + b, 0);
    return e.map((v) => v / sum);
  }

  /** Crop a grey image to box {x, y, w, h} (integers, inside the image). */
  function cropGray(gray, width, box) {
    const out = new Uint8Array(box.w * box.h);
    for (let y = 0; y < box.h; y++) {
      out.set(gray.subarray((box.y + y) * width + box.x, (box.y + y) * width + box.x + box.w), y * box.w);
    }
    return out;
  }

  // --- decoding ------------------------------------------------------------

  /**
   * Decode an image file (Blob) to RGBA at its own size, EXIF orientation
   * applied (as fer_edge's exif_transpose) and no colour management (Pillow
   * ignores ICC profiles). Rejects with a readable message for non-images.
   */
  async function decodeToRgba(blob) {
    let bitmap;
    try {
      bitmap = await createImageBitmap(blob, {
        imageOrientation: "from-image",
        colorSpaceConversion: "none",
        premultiplyAlpha: "none",
      });
    } catch (err) {
      throw new Error(`${blob.name || "file"}: not a readable image (${err.message || err})`);
    }
    return bitmapToRgba(bitmap);
  }

  /** Pixels of an ImageBitmap, video frame or canvas source, at its own size. */
  function bitmapToRgba(source, width, height) {
    const w = width || source.width;
    const h = height || source.height;
    const canvas = document.createElement("canvas");
    canvas.width = w;
    canvas.height = h;
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(source, 0, 0); // same size: a copy, no resampling
    return { rgba: ctx.getImageData(0, 0, w, h).data, width: w, height: h };
  }

  // --- the classifier --------------------------------------------------------

  /** A loaded model: ONNX Runtime Web session plus its metadata. */
  class FerModel {
    constructor(session, info, bytes) {
      this.session = session;
      this.info = info;
      this.size = bytes;
    }

    /** Fetch and load a fer-edge ONNX file (WASM, single thread: no COOP/COEP headers needed). */
    static async load(url, ort) {
      const response = await fetch(url);
      if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
      const bytes = new Uint8Array(await response.arrayBuffer());
      const info = modelInfo(bytes);
      const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
      return new FerModel(session, info, bytes.length);
    }

    /** Model input tensor data for grey pixels (optionally a crop box of them). */
    inputFor(gray, width, height, box) {
      const size = this.info.preprocess.input_size;
      let g = gray;
      let w = width;
      let h = height;
      if (box) {
        g = cropGray(gray, width, box);
        w = box.w;
        h = box.h;
      }
      return normalize(resizeBilinearPillow(g, w, h, size), this.info.preprocess);
    }

    /**
     * Classify decoded pixels. Returns {labels, logits, probs, top, ms}:
     * logits are the graph's raw outputs, probs softmax(logits / temperature);
     * ms is the model run alone (preprocessing excluded).
     */
    async classify(pixels, box) {
      const gray = rgbaToGray(pixels.rgba, pixels.width, pixels.height);
      return this.classifyGray(gray, pixels.width, pixels.height, box);
    }

    /** As classify, for 8-bit grey pixels (e.g. a face crop from blazeface.js). */
    async classifyGray(gray, width, height, box) {
      const size = this.info.preprocess.input_size;
      const data = this.inputFor(gray, width, height, box);
      const ort = global.ort;
      const input = new ort.Tensor("float32", data, [1, 3, size, size]);
      const t0 = performance.now();
      const out = await this.session.run({ [this.session.inputNames[0]]: input });
      const ms = performance.now() - t0;
      const logits = Array.from(out[this.session.outputNames[0]].data);
      const probs = softmax(logits, this.info.temperature);
      const top = probs.indexOf(Math.max(...probs));
      return { labels: this.info.labels, logits, probs, top, ms };
    }
  }

  global.FerEdge = {
    parseOnnxMetadata, modelInfo, rgbaToGray, resizePillow, resizePillowReducing, reducePillow,
    resizeBilinearPillow, normalize, softmax,
    cropGray, decodeToRgba, bitmapToRgba, FerModel,
  };
})(typeof window !== "undefined" ? window : globalThis);
