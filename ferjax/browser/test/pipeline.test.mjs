// The whole pipeline (createPipeline().analyze) against ferjax.Analyzer on the fixtures: the same
// faces (box IoU >= 0.99), the same crops, probabilities within 1e-4 of Python's (JAX) on
// onnxruntime-web's wasm backend, the same labels; photo and video mode.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import test from "node:test";
import * as ort from "onnxruntime-web";
import { cropFaces } from "../src/crop.js";
import { toGrey } from "../src/image.js";
import { createPipeline, EMOTIONS, photoWidth, videoWidth } from "../src/pipeline.js";
import { array, classifierPath, CLASSIFIER_MISSING, diff, iou, meta, rgbaImage, YUNET_PATH } from "../tools/fixtures.mjs";

ort.env.wasm.numThreads = 1;
const classifier = classifierPath();
const skip = classifier ? false : CLASSIFIER_MISSING;

test("detection widths follow Analyzer.photo_width / video_width", () => {
  assert.equal(photoWidth(640, 360), 640);
  assert.equal(photoWidth(4000, 3000), 2048);
  assert.equal(photoWidth(3000, 4000), 1536);
  assert.equal(photoWidth(320, 78000), 8);
  assert.equal(videoWidth(640, 360), 320);
  assert.equal(videoWidth(200, 100), 200);
  assert.equal(videoWidth(320, 78000), 8);
});

test("a model URL that cannot be loaded is named in the error", async () => {
  const url = "http://127.0.0.1:9/no-such-model.onnx";
  await assert.rejects(createPipeline({ ort, yunetModel: url, classifierModel: new Uint8Array(1) }),
    (e) => e.message.includes(url));
});

test("pipeline matches ferjax.Analyzer on every fixture", { skip }, async () => {
  const pipes = new Map();
  for (const a of meta.analyses) {
    if (!pipes.has(a.detect_width)) {
      pipes.set(a.detect_width, await createPipeline({
        ort, yunetModel: readFileSync(YUNET_PATH), classifierModel: readFileSync(classifier), detectWidth: a.detect_width,
      }));
    }
    const pipe = pipes.get(a.detect_width);
    const what = `${a.image} (${a.video ? `video, detected at ${a.detection_width} px` : "photo"})`;
    const rgba = rgbaImage(a.image);
    const faces = await pipe.analyze(rgba, { video: a.video });
    assert.equal(faces.length, a.dets.length, `${what}: number of faces`);
    faces.forEach((f, i) => {
      assert.ok(iou(f.box, a.dets[i].box) >= 0.99, `${what} face ${i}: IoU ${iou(f.box, a.dets[i].box)}`);
      assert.equal(f.landmarks.length, 5);
      assert.equal(f.label, a.labels[i], `${what} face ${i}: label`);
      assert.ok(EMOTIONS.includes(f.label));
    });
    const crops = cropFaces(toGrey(rgba), faces);
    const cropDiff = diff(crops, array(a.crops));
    assert.ok(cropDiff.max <= 2, `${what}: crops differ by up to ${cropDiff.max} grey levels`);
    // the classifier alone, on Python's own crops: within 1e-4 of the JAX probabilities
    const pythonCrops = array(a.crops);
    const probs = await pipe.classify(pythonCrops, a.dets.length);
    assert.ok(diff(probs.flat(), array(a.probabilities)).max < 1e-4, `${what}: probabilities vs JAX`);
    assert.ok(diff(probs.flat(), array(a.probabilities_onnxruntime)).max < 1e-5, `${what}: vs onnxruntime`);
    assert.ok(diff(faces.flatMap((f) => f.probabilities), array(a.probabilities)).max < 1e-3, `${what}: end to end`);
    for (const k of ["detect", "preprocess", "predict"]) assert.ok(pipe.timings[k] >= 0);
  }
  for (const p of pipes.values()) await p.release();
});
