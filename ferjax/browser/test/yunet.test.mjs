// YuNet on onnxruntime-web against Python: the network's raw outputs against onnxruntime (Python)
// on the same image, and the decoding + NMS against cv2.FaceDetectorYN's final detections.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import test from "node:test";
import * as ort from "onnxruntime-web";
import { createYuNet, nmsBoxes, OUTPUT_NAMES, paddedSize, postprocess, rectOverlap } from "../src/yunet.js";
import { array, iou, meta, rgbaImage, YUNET_PATH } from "../tools/fixtures.mjs";

ort.env.wasm.numThreads = 1;
const box = (r) => [r[0], r[1], Math.fround(r[0] + r[2]), Math.fround(r[1] + r[3])];

test("padded size: multiples of 32", () => {
  assert.deepEqual(paddedSize(130, 170), [160, 192]);
  assert.deepEqual(paddedSize(320, 176), [320, 192]);
  assert.deepEqual(paddedSize(1, 33), [32, 64]);
});

for (const y of meta.yunet) {
  const rgba = rgbaImage(y.image);
  const [padW, padH] = paddedSize(rgba.width, rgba.height);
  const outputs = Object.fromEntries(OUTPUT_NAMES.map((n) => [n, array(y.outputs[n])]));

  test(`decode + NMS of onnxruntime's outputs match cv2.FaceDetectorYN (${y.image})`, () => {
    const got = postprocess(outputs, padW, padH);
    assert.equal(got.length, y.opencv_rows.length);
    got.forEach((f, i) => {
      const want = y.opencv_rows[i];
      assert.ok(iou(box(f), box(want)) >= 0.99, `face ${i}: IoU ${iou(box(f), box(want))}`);
      for (let k = 4; k < 14; k++) assert.ok(Math.abs(f[k] - want[k]) < 1, `face ${i} landmark value ${k}`);
      assert.ok(Math.abs(f[14] - want[14]) < 0.01, `face ${i} score ${f[14]} vs ${want[14]}`);
    });
  });

  test(`onnxruntime-web's raw outputs equal onnxruntime (Python) within 1e-3 (${y.image})`, async () => {
    const yunet = await createYuNet({ ort, model: readFileSync(YUNET_PATH) });
    const { outputs: got } = await yunet.forward(rgba);
    for (const name of OUTPUT_NAMES) {
      const want = outputs[name];
      assert.equal(got[name].length, want.length, name);
      let max = 0;
      for (let i = 0; i < want.length; i++) max = Math.max(max, Math.abs(got[name][i] - want[i]));
      assert.ok(max < 1e-3, `${name}: max abs diff ${max}`);
    }
    await yunet.release();
  });
}

test("NMS keeps the best of overlapping boxes, in score order, like cv::dnn::NMSBoxes", () => {
  const rects = [[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 5, 5], [0, 0, 10, 10], [50, 50, 4, 4]];
  const scores = [0.8, 0.9, 0.7, 0.9, 0.6];
  // 0.9 ties keep input order; [1] and [3] overlap by 81/119 > 0.3; 0.6 is not above 0.6
  assert.deepEqual(nmsBoxes(rects, scores, 0.6, 0.3, 5000), [1, 2]);
  assert.deepEqual(nmsBoxes(rects, scores, 0.6, 0.3, 1), [1]);
  assert.equal(rectOverlap([0, 0, 10, 10], [5, 0, 10, 10]), Math.fround(1 - Math.fround(1 - 50 / 150)));
  assert.equal(rectOverlap([0, 0, 0, 10], [0, 0, 0, 10]), 1); // two empty rects: distance 0
});
