// Grey conversion and INTER_AREA resizing against cv2 4.14 (fixtures): bit-exact.
import assert from "node:assert/strict";
import test from "node:test";
import { resizeArea, rint, toBgrPlanar, toGrey } from "../src/image.js";
import { array, diff, meta, rgbaImage } from "../tools/fixtures.mjs";

test("grey equals cv2.cvtColor(BGR2GRAY) exactly", () => {
  const got = toGrey(rgbaImage(meta.grey.image)).data;
  assert.deepEqual(diff(got, array(meta.grey.expected)), { max: 0, count: 0 });
});

test("grey uses OpenCV's 15-bit weights on extreme colours", () => {
  const px = { data: new Uint8Array([255, 255, 255, 255, 0, 0, 0, 255, 255, 0, 0, 255, 0, 255, 0, 255, 0, 0, 255, 255]), width: 5, height: 1 };
  assert.deepEqual([...toGrey(px).data], [255, 0, 76, 150, 29]);
});

for (const c of meta.area) {
  const what = c.grey_region ? `grey ${c.grey_region.slice(2).join("x")}` : `${c.image} RGB`;
  test(`INTER_AREA ${what} -> ${c.size.join("x")} equals cv2.resize exactly`, () => {
    let src;
    if (c.grey_region) {
      const [x, y, w, h] = c.grey_region;
      const grey = toGrey(rgbaImage(c.image));
      const data = new Uint8Array(w * h);
      for (let r = 0; r < h; r++) data.set(grey.data.subarray((y + r) * grey.width + x, (y + r) * grey.width + x + w), r * w);
      src = { data, width: w, height: h, channels: 1 };
    } else {
      const rgba = rgbaImage(c.image);
      src = rgba; // 4 channels: each is resized on its own, so RGB matches cv2's 3-channel result
    }
    const out = resizeArea(src, c.size[0], c.size[1]);
    const want = array(c.expected);
    const got = c.grey_region ? out.data : out.data.filter((_, i) => i % 4 !== 3);
    assert.deepEqual(diff(got, want), { max: 0, count: 0 });
  });
}

test("rint rounds half to even", () => {
  assert.deepEqual([0.5, 1.5, 2.5, -0.5, -1.5, 2.4999, 2.5001].map(rint), [0, 2, 2, -0, -2, 2, 3]);
});

test("YuNet input: BGR planes, zero padding right and bottom", () => {
  const img = { data: new Uint8Array([10, 20, 30, 255, 40, 50, 60, 255]), width: 2, height: 1 };
  const blob = toBgrPlanar(img, 3, 2);
  assert.deepEqual([...blob], [30, 60, 0, 0, 0, 0, 20, 50, 0, 0, 0, 0, 10, 40, 0, 0, 0, 0]);
});
