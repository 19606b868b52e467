// Face crops for the classifier, as ferjax/realtime/align.py makes them: square, centred on the
// box, eye-aligned when landmarks exist, 48x48 grey. A detection is
// {box: [x1, y1, x2, y2], score, landmarks: [[x, y] x 5] | null} in the grey image's pixels.

import { rint, resizeArea, rotationMatrix2D, warpAffineGrey } from "./image.js";

/** Roll angle in degrees of the line through the two eyes (landmarks 0 and 1), image-left eye first. */
export function eyeAngle(landmarks) {
  let [a, b] = [landmarks[0], landmarks[1]];
  if (b[0] < a[0] || (b[0] === a[0] && b[1] < a[1])) [a, b] = [b, a]; // Python's sorted() of [x, y] pairs
  return Math.atan2(b[1] - a[1], b[0] - a[0]) * (180 / Math.PI);
}

/** The s x s square of `grey` whose top-left corner is (l, t), edge pixels repeated outside. */
function squareReplicate(grey, l, t, s) {
  const { data, width: w, height: h } = grey;
  const out = new Uint8Array(s * s);
  for (let y = 0; y < s; y++) {
    const sy = Math.min(Math.max(t + y, 0), h - 1) * w;
    for (let x = 0; x < s; x++) out[y * s + x] = data[sy + Math.min(Math.max(l + x, 0), w - 1)];
  }
  return { data: out, width: s, height: s, channels: 1 };
}

/**
 * A size x size grey crop (Uint8Array) centred on the box, side max(w, h) * (1 + margin),
 * rotated so the eyes are level when `align` and landmarks exist (rolls beyond `maxRoll`
 * degrees are ignored); under 1 degree: crop then INTER_AREA resize, else one warpAffine.
 */
export function cropFace(grey, det, { size = 48, margin = 0, align = true, maxRoll = 45 } = {}) {
  const [x1, y1, x2, y2] = det.box;
  const cx = (x1 + x2) / 2, cy = (y1 + y2) / 2;
  const side = Math.max(x2 - x1, y2 - y1, 1.0) * (1 + margin);
  let angle = align && det.landmarks ? eyeAngle(det.landmarks) : 0;
  if (Math.abs(angle) > maxRoll) angle = 0;
  if (Math.abs(angle) < 1) {
    const l = rint(cx - side / 2), t = rint(cy - side / 2);
    const s = Math.max(rint(side), 1);
    return resizeArea(squareReplicate(grey, l, t, s), size, size).data;
  }
  const m = rotationMatrix2D(cx, cy, angle, size / side);
  m[2] += size / 2 - cx;
  m[5] += size / 2 - cy;
  return warpAffineGrey(grey, m, size, size).data;
}

/** Crops of every detection as one Float32Array [N, size, size, 1] of grey levels 0..255. */
export function cropFaces(grey, dets, options = {}) {
  const size = options.size ?? 48;
  const out = new Float32Array(dets.length * size * size);
  dets.forEach((d, i) => out.set(cropFace(grey, d, options), i * size * size));
  return out;
}
