// Test helper (Node only): loads test/fixtures (written by tools/browser_fixtures.py in the repo
// root) and finds the models the tests run. Kept out of test/ so that `node --test test/` does not
// count it as a test file.
import { existsSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));
export const BROWSER = join(HERE, "..");
export const FIXTURES = join(BROWSER, "test", "fixtures");
export const YUNET_PATH = join(BROWSER, "..", "assets", "face_detection_yunet_2026may.onnx");

export const meta = JSON.parse(readFileSync(join(FIXTURES, "fixtures.json"), "utf8"));
const bin = readFileSync(join(FIXTURES, "fixtures.bin"));

/** The array a fixture reference names: Uint8Array or Float32Array (a copy), with its shape. */
export function array(ref) {
  const n = ref.shape.reduce((a, b) => a * b, 1);
  const bytes = bin.subarray(ref.offset, ref.offset + n * (ref.dtype === "float32" ? 4 : 1));
  const copy = new Uint8Array(bytes);
  const data = ref.dtype === "float32" ? new Float32Array(copy.buffer) : copy;
  return Object.assign(data, { shape: ref.shape });
}

/** A fixture image as RGBA ImageData-like {data, width, height} (grey ones replicated). */
export function rgbaImage(name) {
  const a = array(meta.images[name]);
  const [h, w] = a.shape, cn = a.shape[2] ?? 1;
  const out = new Uint8ClampedArray(w * h * 4);
  for (let i = 0; i < w * h; i++) {
    for (let c = 0; c < 3; c++) out[i * 4 + c] = a[i * cn + (cn === 1 ? 0 : c)];
    out[i * 4 + 3] = 255;
  }
  return { data: out, width: w, height: h };
}

/** The exported classifier the fixtures were made with: $FERJAX_CLASSIFIER_ONNX, or ferjax's
 * ONNX cache ($FERJAX_CACHE_DIR/onnx or ~/.cache/ferjax/onnx); null when absent. */
export function classifierPath() {
  const candidates = [process.env.FERJAX_CLASSIFIER_ONNX,
    join(process.env.FERJAX_CACHE_DIR || join(homedir(), ".cache", "ferjax"), "onnx", meta.classifier.file)];
  return candidates.find((p) => p && existsSync(p)) ?? null;
}

export const CLASSIFIER_MISSING = `the exported classifier ${meta.classifier.file} is not in ferjax's ONNX cache: `
  + `python -c "from ferjax import export, pretrained; export.cached_onnx(pretrained.DEFAULT)" `
  + `(needs the onnx extra), or set FERJAX_CLASSIFIER_ONNX`;

/** Largest absolute difference and count of differing values of two equal-length arrays. */
export function diff(a, b) {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let max = 0, count = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (d > 0) count++;
    if (d > max) max = d;
  }
  return { max, count };
}

export function iou(a, b) {
  const ix = Math.max(0, Math.min(a[2], b[2]) - Math.max(a[0], b[0]));
  const iy = Math.max(0, Math.min(a[3], b[3]) - Math.max(a[1], b[1]));
  const inter = ix * iy;
  const union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
  return union > 0 ? inter / union : 0;
}
