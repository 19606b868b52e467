// ferjax's detect -> crop -> classify pipeline in the browser (and in Node), matching
// ferjax.Analyzer with the default detector (YuNet) and an exported classifier:
//
//   import * as ort from "./ort/ort.wasm.min.mjs";      // page: the copied onnxruntime-web dist
//   // (Node: import * as ort from "onnxruntime-web";  it resolves to the same wasm build)
//   const pipe = await createPipeline({ ort, yunetModel: "models/yunet.onnx",
//                                       classifierModel: "models/classifier.onnx" });
//   const faces = await pipe.analyze(ctx.getImageData(0, 0, w, h), { video: true });
//
// The `ort` module is a parameter rather than an import so that these modules have no
// bundler- or Node-specific import: the page loads ort.wasm.min.mjs / ort.min.mjs from wherever
// it copied the dist folder (and sets ort.env.wasm.wasmPaths), Node imports "onnxruntime-web".
// Pixels are RGBA ({data, width, height} like ImageData); results are in frame pixels.

import { resizeArea, rint, toGrey } from "./image.js";
import { cropFaces } from "./crop.js";
import { createYuNet, loadModelBytes } from "./yunet.js";

/** FER2013 label order (ferjax.data.records.EMOTIONS), the classifier's output order. */
export const EMOTIONS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"];
export const MAX_SIDE = 2048; // ferjax.analyzer.MAX_SIDE
export const MIN_FACE = 12; // Analyzer(min_face=12)
export const MAX_FACES = 64; // Analyzer(max_faces=64)
export const FACE_SIZE = 48;

/** Analyzer.photo_width: the frame's width, or scaled so its longer side is `maxSide`. */
export function photoWidth(w, h, maxSide = MAX_SIDE) {
  return Math.max(h, w) <= maxSide ? w : Math.max(1, rint((w * maxSide) / Math.max(h, w)));
}

/** Analyzer.video_width: the detector's working width, capped by the frame and by `maxSide`. */
export function videoWidth(w, h, detectWidth = 320, maxSide = MAX_SIDE) {
  return Math.min(detectWidth || w, w, photoWidth(w, h, maxSide));
}

/** ResizingDetector.resized: the copy the detector sees at `width` (INTER_AREA) and its scale. */
export function detectionImage(rgba, width) {
  const w = rgba.width;
  if (!width || width >= w) return { image: rgba, scale: 1 };
  const s = width / w;
  return { image: resizeArea(rgba, width, Math.max(1, rint(rgba.height * s))), scale: s };
}

/** A YuNet row (Float32Array 15) as a detection in frame pixels, as YuNetDetector + scaled() give it. */
function toDetection(f, scale) {
  const inv = scale === 1 ? 1 : 1 / scale;
  const box = [f[0], f[1], Math.fround(f[0] + f[2]), Math.fround(f[1] + f[3])].map((v) => v * inv);
  const landmarks = [];
  for (let n = 0; n < 5; n++) landmarks.push([f[4 + 2 * n] * inv, f[5 + 2 * n] * inv]);
  return { box, score: f[14], landmarks };
}

/**
 * Loads both models and returns {analyze, detect, classify, release, timings, options}.
 *
 * Options: ort (the onnxruntime-web module, required), yunetModel and classifierModel (URL,
 * ArrayBuffer or Uint8Array), labels (default EMOTIONS), detectWidth (video detection width,
 * 320), maxSide (2048), threshold (0.6), nmsThreshold (0.3), topK (5000), minFace (12 px),
 * maxFaces (64), align (true), margin (0), sessionOptions (passed to both sessions).
 */
export async function createPipeline({
  ort, yunetModel, classifierModel, labels = EMOTIONS, detectWidth = 320, maxSide = MAX_SIDE,
  threshold = 0.6, nmsThreshold = 0.3, topK = 5000, minFace = MIN_FACE, maxFaces = MAX_FACES,
  align = true, margin = 0, sessionOptions = { executionProviders: ["wasm"] },
} = {}) {
  if (!ort?.InferenceSession || !ort?.Tensor) throw new Error("createPipeline: pass the onnxruntime-web module as `ort`");
  if (!yunetModel) throw new Error("createPipeline: yunetModel (URL or bytes) is required");
  if (!classifierModel) throw new Error("createPipeline: classifierModel (URL or bytes) is required");
  const [yunet, classifierBytes] = await Promise.all([
    createYuNet({ ort, model: yunetModel, sessionOptions, threshold, nmsThreshold, topK }),
    loadModelBytes(classifierModel, "classifier model"),
  ]);
  let classifier;
  try {
    classifier = await ort.InferenceSession.create(classifierBytes, sessionOptions);
  } catch (e) {
    const where = typeof classifierModel === "string" ? ` from ${classifierModel}` : "";
    throw new Error(`cannot create the classifier session${where}: ${e.message}`);
  }
  const inputName = classifier.inputNames.includes("faces") ? "faces" : classifier.inputNames[0];
  const outputName = classifier.outputNames.includes("probabilities") ? "probabilities" : classifier.outputNames[0];
  const timings = { detect: 0, preprocess: 0, predict: 0 };

  /** Faces of at least minFace px, best first, at most maxFaces, in frame pixels. */
  async function detect(rgba, { video = false } = {}) {
    checkImage(rgba);
    const width = video ? videoWidth(rgba.width, rgba.height, detectWidth, maxSide) : photoWidth(rgba.width, rgba.height, maxSide);
    const { image, scale } = detectionImage(rgba, width);
    const rows = (await yunet.detect(image)).filter((f) => f.every(Number.isFinite));
    const dets = rows.map((f) => toDetection(f, scale))
      .filter((d) => Math.min(d.box[2] - d.box[0], d.box[3] - d.box[1]) >= minFace);
    dets.sort((a, b) => b.score - a.score); // stable, as Python's sorted()
    return dets.slice(0, maxFaces);
  }

  /** Class probabilities [N][labels.length] of N faces, grey 0..255 as [N, 48, 48, 1] values
   * (a Float32Array, or any array of numbers, e.g. Uint8Array crops). */
  async function classify(faces, n = faces.length / (FACE_SIZE * FACE_SIZE)) {
    if (n === 0) return [];
    if (faces.length !== n * FACE_SIZE * FACE_SIZE) {
      throw new Error(`classify: ${faces.length} values are not ${n} faces of ${FACE_SIZE}x${FACE_SIZE}`);
    }
    const data = faces instanceof Float32Array ? faces : Float32Array.from(faces);
    const input = new ort.Tensor("float32", data, [n, FACE_SIZE, FACE_SIZE, 1]);
    const out = (await classifier.run({ [inputName]: input }))[outputName].data;
    const k = out.length / n;
    return Array.from({ length: n }, (_, i) => Array.from(out.subarray(i * k, (i + 1) * k)));
  }

  async function analyze(rgba, { video = false } = {}) {
    const t0 = performance.now();
    const dets = await detect(rgba, { video });
    const t1 = performance.now();
    const faces = dets.length ? cropFaces(toGrey(rgba), dets, { size: FACE_SIZE, margin, align }) : new Float32Array(0);
    const t2 = performance.now();
    const probs = await classify(faces, dets.length);
    const t3 = performance.now();
    Object.assign(timings, { detect: t1 - t0, preprocess: t2 - t1, predict: t3 - t2 });
    return dets.map((d, i) => {
      const p = probs[i];
      let best = 0;
      for (let j = 1; j < p.length; j++) if (p[j] > p[best]) best = j; // first maximum, as np.argmax
      return { box: d.box, score: d.score, landmarks: d.landmarks, probabilities: p, label: labels[best] };
    });
  }

  async function release() {
    await yunet.release();
    await classifier.release?.();
  }

  return {
    analyze, detect, classify, release, timings, yunet, classifier,
    options: { labels, detectWidth, maxSide, threshold, nmsThreshold, topK, minFace, maxFaces, align, margin },
  };
}

function checkImage(img) {
  if (!img || !img.data || !(img.width > 0) || !(img.height > 0)) {
    throw new Error("analyze: expected an RGBA image {data, width, height} (e.g. ImageData)");
  }
  const cn = img.channels ?? 4;
  if (img.data.length !== img.width * img.height * cn) {
    throw new Error(`analyze: data has ${img.data.length} values, expected ${img.width}x${img.height}x${cn}`);
  }
}
