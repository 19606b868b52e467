// crop_face (ferjax/realtime/align.py) against Python on given detections: bit-exact, both the
// axis-aligned path (crop + INTER_AREA, edges replicated) and the rotated one (warpAffine).
import assert from "node:assert/strict";
import test from "node:test";
import { cropFace, cropFaces, eyeAngle } from "../src/crop.js";
import { toGrey } from "../src/image.js";
import { array, diff, meta, rgbaImage } from "../tools/fixtures.mjs";

for (const c of meta.crop) {
  const kind = Math.abs(c.angle) > 45 ? "roll beyond 45 (ignored)" : Math.abs(c.angle) < 1 ? "axis-aligned" : "rotated";
  test(`crop_face ${kind}, angle ${c.angle.toFixed(2)}, margin ${c.margin}, box ${c.det.box.map((v) => v.toFixed(1))}`, () => {
    assert.ok(Math.abs(eyeAngle(c.det.landmarks) - c.angle) < 1e-9);
    const got = cropFace(toGrey(rgbaImage(c.image)), c.det, { margin: c.margin });
    assert.deepEqual(diff(got, array(c.expected)), { max: 0, count: 0 });
  });
}

test("crops of the pipeline's own detections equal Python's", () => {
  for (const a of meta.analyses.filter((x) => x.dets.length)) {
    const got = cropFaces(toGrey(rgbaImage(a.image)), a.dets);
    assert.deepEqual(diff(got, array(a.crops)), { max: 0, count: 0 }, `${a.image} video=${a.video}`);
  }
});

test("eyeAngle takes the image-left eye first", () => {
  assert.equal(eyeAngle([[10, 10], [0, 0]]), 45);
  assert.equal(eyeAngle([[0, 0], [10, 10]]), 45);
});
