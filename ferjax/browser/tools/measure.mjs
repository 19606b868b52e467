// The JS side of tools/deployed_accuracy.py: runs ferjax/browser/src's pipeline (onnxruntime-web,
// wasm backend) under Node on the raw RGB files the Python side wrote, and writes every face found.
//
//   node tools/measure.mjs --manifest M.json --out R.json --yunet Y.onnx --classifier C.onnx [--threads 1]
//
// FER images are analysed as photos, video frames in video mode; each image becomes RGBA (alpha
// 255) first, as a canvas would give it. Both sessions are created once and reused.
import { openSync, readFileSync, readSync, writeFileSync, closeSync } from "node:fs";
import { parseArgs } from "node:util";
import * as ort from "onnxruntime-web";
import { createPipeline } from "../src/pipeline.js";

const { values: args } = parseArgs({
  options: {
    manifest: { type: "string" }, out: { type: "string" }, yunet: { type: "string" },
    classifier: { type: "string" }, threads: { type: "string", default: "1" },
  },
});
for (const k of ["manifest", "out", "yunet", "classifier"]) {
  if (!args[k]) throw new Error(`measure.mjs: --${k} is required`);
}
const threads = Number(args.threads);
ort.env.wasm.numThreads = threads;
const manifest = JSON.parse(readFileSync(args.manifest, "utf8"));
const pipe = await createPipeline({
  ort, yunetModel: readFileSync(args.yunet), classifierModel: readFileSync(args.classifier),
});

function rgba(rgb, width, height) {
  const out = new Uint8ClampedArray(width * height * 4);
  for (let i = 0, j = 0; j < rgb.length; i += 4, j += 3) {
    out[i] = rgb[j]; out[i + 1] = rgb[j + 1]; out[i + 2] = rgb[j + 2]; out[i + 3] = 255;
  }
  return { data: out, width, height };
}

const faceJson = (f) => ({
  box: f.box, score: f.score, label: f.label,
  probabilities: f.probabilities.map((p) => Math.round(p * 1e7) / 1e7),
});

function readAt(fd, offset, length) {
  const buf = Buffer.alloc(length);
  readSync(fd, buf, 0, length, offset);
  return buf;
}

const results = { fer: [], videos: [], runtime: `onnxruntime-web ${ort.env.versions?.web} wasm (Node ${process.version})`, threads };
const fer = manifest.fer;
const size = fer.width * fer.height * 3;
let fd = openSync(fer.file, "r");
let t = performance.now();
for (let i = 0; i < fer.count; i++) {
  const faces = await pipe.analyze(rgba(readAt(fd, i * size, size), fer.width, fer.height));
  results.fer.push(faces.map(faceJson));
  if ((i + 1) % 500 === 0) console.error(`measure.mjs: ${i + 1}/${fer.count} FER images`);
}
closeSync(fd);
const ferSeconds = (performance.now() - t) / 1000;
t = performance.now();
fd = openSync(manifest.frames.file, "r");
for (const v of manifest.frames.videos) {
  const frames = [];
  for (const fr of v.frames) {
    const faces = await pipe.analyze(rgba(readAt(fd, fr.offset, v.width * v.height * 3), v.width, v.height), { video: true });
    frames.push(faces.map(faceJson));
  }
  results.videos.push({ name: v.name, frames });
}
closeSync(fd);
results.seconds = { fer: ferSeconds, videos: (performance.now() - t) / 1000 };
writeFileSync(args.out, JSON.stringify(results));
console.error(`measure.mjs: ${fer.count} FER images in ${ferSeconds.toFixed(1)} s, frames in ${results.seconds.videos.toFixed(1)} s (${threads} thread(s))`);
await pipe.release();
