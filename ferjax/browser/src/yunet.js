// YuNet face detection as cv::FaceDetectorYN (OpenCV 4.14, modules/objdetect/src/face_detect.cpp)
// does it, on ONNX Runtime Web: pad to multiples of 32, BGR planar float input, decode the three
// strides, score threshold, cv::dnn::NMSBoxes. Browser and Node alike (no imports).

import { toBgrPlanar } from "./image.js";

const fround = Math.fround;
export const STRIDES = [8, 16, 32];
export const OUTPUT_NAMES = ["cls_8", "cls_16", "cls_32", "obj_8", "obj_16", "obj_32",
  "bbox_8", "bbox_16", "bbox_32", "kps_8", "kps_16", "kps_32"];

/** The padded network input size for a w x h image: each side rounded up to a multiple of 32. */
export function paddedSize(w, h) {
  return [Math.floor((w - 1) / 32 + 1) * 32, Math.floor((h - 1) / 32 + 1) * 32];
}

/**
 * Candidate faces from YuNet's 12 outputs (a map name -> Float32Array, as laid out by the ONNX
 * model: [1, anchors, 1|4|10]) for a padW x padH input. Each face is a Float32Array of 15:
 * x1, y1, w, h, 5 landmarks (x, y) (right eye, left eye, nose, right and left mouth corner, as
 * the model orders them), score. Every step is float32 arithmetic, as in OpenCV.
 */
export function decode(outputs, padW, padH, scoreThreshold = 0.6) {
  const thr = fround(scoreThreshold);
  const faces = [];
  STRIDES.forEach((stride, i) => {
    const cols = Math.floor(padW / stride), rows = Math.floor(padH / stride);
    const cls = outputs[OUTPUT_NAMES[i]], obj = outputs[OUTPUT_NAMES[i + 3]];
    const bbox = outputs[OUTPUT_NAMES[i + 6]], kps = outputs[OUTPUT_NAMES[i + 9]];
    if (!cls || !obj || !bbox || !kps) throw new Error(`YuNet: missing outputs for stride ${stride}`);
    if (cls.length < rows * cols) {
      throw new Error(`YuNet: ${OUTPUT_NAMES[i]} has ${cls.length} anchors, expected ${rows * cols} for ${padW}x${padH}`);
    }
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const idx = r * cols + c;
        const cs = Math.min(Math.max(cls[idx], 0), 1), os = Math.min(Math.max(obj[idx], 0), 1);
        const score = fround(Math.sqrt(fround(cs * os)));
        if (score < thr) continue;
        const face = new Float32Array(15);
        const cx = fround(fround(c + bbox[idx * 4]) * stride);
        const cy = fround(fround(r + bbox[idx * 4 + 1]) * stride);
        const w = fround(fround(Math.exp(bbox[idx * 4 + 2])) * stride);
        const h = fround(fround(Math.exp(bbox[idx * 4 + 3])) * stride);
        face[0] = cx - fround(w / 2);
        face[1] = cy - fround(h / 2);
        face[2] = w;
        face[3] = h;
        for (let n = 0; n < 5; n++) {
          face[4 + 2 * n] = fround(kps[idx * 10 + 2 * n] + c) * stride;
          face[5 + 2 * n] = fround(kps[idx * 10 + 2 * n + 1] + r) * stride;
        }
        face[14] = score;
        faces.push(face);
      }
    }
  });
  return faces;
}

/** cv::Rect & cv::Rect area (0 when they do not overlap). Rects are [x, y, w, h] integers. */
function intersectionArea(a, b) {
  if (a[2] <= 0 || a[3] <= 0 || b[2] <= 0 || b[3] <= 0) return 0;
  const w = Math.min(a[0] + a[2], b[0] + b[2]) - Math.max(a[0], b[0]);
  const h = Math.min(a[1] + a[3], b[1] + b[3]) - Math.max(a[1], b[1]);
  return w <= 0 || h <= 0 ? 0 : w * h;
}

/** OpenCV's rectOverlap: 1 - (float) jaccardDistance(a, b) on integer rects. */
export function rectOverlap(a, b) {
  const aa = a[2] * a[3], ab = b[2] * b[3];
  if (aa + ab <= 0) return 1; // jaccardDistance 0
  const inter = intersectionArea(a, b);
  return fround(1 - fround(1 - inter / (aa + ab - inter)));
}

/**
 * cv::dnn::NMSBoxes(rects, scores, scoreThreshold, nmsThreshold, indices, eta=1, topK): keeps
 * scores strictly above the threshold, stable-sorts them descending, keeps the first topK, then
 * greedily keeps each box whose overlap with every kept box is <= nmsThreshold. Returns indices.
 */
export function nmsBoxes(rects, scores, scoreThreshold, nmsThreshold, topK = 0) {
  const thr = fround(scoreThreshold), nmsThr = fround(nmsThreshold);
  let order = [];
  for (let i = 0; i < scores.length; i++) if (scores[i] > thr) order.push(i);
  order.sort((i, j) => scores[j] - scores[i] || i - j); // stable: equal scores keep input order
  if (topK > 0 && topK < order.length) order = order.slice(0, topK);
  const keep = [];
  for (const i of order) {
    if (keep.every((k) => rectOverlap(rects[i], rects[k]) <= nmsThr)) keep.push(i);
  }
  return keep;
}

/** FaceDetectorYN's post-processing: decode, then NMS on integer-truncated boxes (when > 1 face). */
export function postprocess(outputs, padW, padH, { threshold = 0.6, nmsThreshold = 0.3, topK = 5000 } = {}) {
  const faces = decode(outputs, padW, padH, threshold);
  if (faces.length <= 1) return faces;
  const rects = faces.map((f) => [Math.trunc(f[0]), Math.trunc(f[1]), Math.trunc(f[2]), Math.trunc(f[3])]);
  const keep = nmsBoxes(rects, faces.map((f) => f[14]), threshold, nmsThreshold, topK);
  return keep.map((i) => faces[i]);
}

/** Model bytes from a URL (fetched; the error names the URL), an ArrayBuffer or a typed array. */
export async function loadModelBytes(model, what = "model") {
  if (model instanceof Uint8Array) return model;
  if (model instanceof ArrayBuffer) return new Uint8Array(model);
  if (ArrayBuffer.isView(model)) return new Uint8Array(model.buffer, model.byteOffset, model.byteLength);
  if (typeof model === "string" || model instanceof URL) {
    let response;
    try {
      response = await fetch(model);
    } catch (e) {
      throw new Error(`cannot load the ${what} from ${model}: ${e.message}`);
    }
    if (!response.ok) throw new Error(`cannot load the ${what} from ${model}: HTTP ${response.status} ${response.statusText}`);
    return new Uint8Array(await response.arrayBuffer());
  }
  throw new Error(`the ${what} must be a URL, an ArrayBuffer or a Uint8Array, got ${typeof model}`);
}

/**
 * A YuNet detector on an ONNX Runtime Web session. `detect(img)` returns faces in `img`'s pixels
 * as Float32Array(15) rows like cv::FaceDetectorYN::detect (best first after NMS).
 */
export async function createYuNet({ ort, model, sessionOptions, threshold = 0.6, nmsThreshold = 0.3, topK = 5000 }) {
  if (!ort?.InferenceSession) throw new Error("createYuNet: pass the onnxruntime-web module as `ort`");
  const bytes = await loadModelBytes(model, "YuNet model");
  let session;
  try {
    session = await ort.InferenceSession.create(bytes, sessionOptions);
  } catch (e) {
    throw new Error(`cannot create the YuNet session${typeof model === "string" ? ` from ${model}` : ""}: ${e.message}`);
  }
  const inputName = session.inputNames[0];
  return {
    session,
    /** Raw outputs (name -> Float32Array) for an image; exposed for tests. */
    async forward(img) {
      const [padW, padH] = paddedSize(img.width, img.height);
      const input = new ort.Tensor("float32", toBgrPlanar(img, padW, padH), [1, 3, padH, padW]);
      const result = await session.run({ [inputName]: input }, OUTPUT_NAMES);
      const outputs = {};
      for (const name of OUTPUT_NAMES) outputs[name] = result[name].data;
      return { outputs, padW, padH };
    },
    async detect(img) {
      const { outputs, padW, padH } = await this.forward(img);
      return postprocess(outputs, padW, padH, { threshold, nmsThreshold, topK });
    },
    async release() {
      await session.release?.();
    },
  };
}
