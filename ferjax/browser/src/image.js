// Pixel operations of ferjax's Python pipeline, re-implemented to give OpenCV's (4.14) results
// on 8-bit images. An image is {data, width, height, channels}: data a Uint8Array or
// Uint8ClampedArray, row-major and interleaved; `channels` defaults to 4 (RGBA, like ImageData).
// Works the same in a browser and in Node (no imports).

const fround = Math.fround;

/** Number of interleaved channels of `img` (4 when not given: RGBA ImageData). */
export function channelsOf(img) {
  return img.channels ?? 4;
}

/** A new 8-bit image of the given size and channel count, zero-filled. */
export function makeImage(width, height, channels) {
  return { data: new Uint8Array(width * height * channels), width, height, channels };
}

/** Round half to even, as cvRound / lrint / SIMD conversions do under the default FP mode. */
export function rint(x) {
  const r = Math.round(x);
  return r - x === 0.5 && (r & 1) !== 0 ? r - 1 : r;
}

function sat8(v) {
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/**
 * Grey levels of an RGBA (or RGB, channels=3) image as cv2.cvtColor(bgr, COLOR_BGR2GRAY) gives
 * them. OpenCV 4.14 uses 15-bit fixed-point weights (R 9798, G 19235, B 3735, rounding 1<<14);
 * this equals cv2 on all 2^24 colours (checked with cv2 4.14; the older 14-bit weights
 * 4899/9617/1868 differ on 43,864 of them).
 */
export function toGrey(img) {
  const cn = channelsOf(img);
  if (cn === 1) return { data: Uint8Array.from(img.data), width: img.width, height: img.height, channels: 1 };
  if (cn < 3) throw new Error(`toGrey: expected 1, 3 or 4 channels (RGB order), got ${cn}`);
  const n = img.width * img.height;
  const src = img.data;
  const out = new Uint8Array(n);
  for (let i = 0, j = 0; i < n; i++, j += cn) {
    out[i] = (src[j] * 9798 + src[j + 1] * 19235 + src[j + 2] * 3735 + 16384) >> 15;
  }
  return { data: out, width: img.width, height: img.height, channels: 1 };
}

/**
 * YuNet's input blob: the RGBA/RGB image as planar BGR float32 [3, padH, padW] (0..255), zero
 * outside the image (cv::FaceDetectorYN pads right and bottom with BORDER_CONSTANT 0, then
 * cv::dnn::blobFromImage with scale 1, no mean, no channel swap).
 */
export function toBgrPlanar(img, padW = img.width, padH = img.height) {
  const cn = channelsOf(img);
  if (cn < 3) throw new Error(`toBgrPlanar: expected 3 or 4 channels (RGB order), got ${cn}`);
  const { width: w, height: h, data } = img;
  if (padW < w || padH < h) throw new Error(`toBgrPlanar: pad size ${padW}x${padH} smaller than ${w}x${h}`);
  const plane = padW * padH;
  const out = new Float32Array(3 * plane);
  for (let y = 0; y < h; y++) {
    let j = y * w * cn;
    let o = y * padW;
    for (let x = 0; x < w; x++, j += cn, o++) {
      out[o] = data[j + 2];
      out[plane + o] = data[j + 1];
      out[2 * plane + o] = data[j];
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------- resize

/**
 * cv2.resize(img, (dw, dh), interpolation=INTER_AREA) for 8-bit images of any channel count.
 * Follows OpenCV's three paths: integer downscale factors (2x2: (a+b+c+d+2)>>2; other integer
 * factors: float mean rounded half to even), fractional downscale (float32 area weights per
 * source pixel) and upscaling (OpenCV's "area" variant of bilinear with 11-bit fixed point,
 * with the rounding of its SIMD vertical pass).
 */
export function resizeArea(img, dw, dh) {
  const cn = channelsOf(img);
  const { width: sw, height: sh } = img;
  if (!(dw > 0 && dh > 0 && sw > 0 && sh > 0)) throw new Error(`resizeArea: bad size ${sw}x${sh} -> ${dw}x${dh}`);
  if (dw === sw && dh === sh) {
    return { data: Uint8Array.from(img.data), width: sw, height: sh, channels: cn };
  }
  const invX = dw / sw, invY = dh / sh;
  const scaleX = 1 / invX, scaleY = 1 / invY;
  const iscaleX = rint(scaleX), iscaleY = rint(scaleY);
  const fast = Math.abs(scaleX - iscaleX) < Number.EPSILON && Math.abs(scaleY - iscaleY) < Number.EPSILON;
  if (scaleX >= 1 && scaleY >= 1) {
    if (fast) return areaFast(img, cn, dw, dh, iscaleX, iscaleY);
    return areaGeneral(img, cn, dw, dh, scaleX, scaleY);
  }
  return areaUpscale(img, cn, dw, dh, scaleX, scaleY, invX, invY);
}

function areaFast(img, cn, dw, dh, kx, ky) {
  const src = img.data, sw = img.width;
  const out = makeImage(dw, dh, cn);
  const dst = out.data;
  const rowStride = sw * cn;
  if (kx === 2 && ky === 2 && (cn === 1 || cn === 3 || cn === 4)) {
    for (let dy = 0; dy < dh; dy++) {
      const r0 = 2 * dy * rowStride, r1 = r0 + rowStride;
      let o = dy * dw * cn;
      for (let dx = 0; dx < dw; dx++) {
        const s = 2 * dx * cn;
        for (let c = 0; c < cn; c++, o++) {
          const i = s + c;
          dst[o] = (src[r0 + i] + src[r0 + i + cn] + src[r1 + i] + src[r1 + i + cn] + 2) >> 2;
        }
      }
    }
    return out;
  }
  const scale = fround(1 / (kx * ky));
  for (let dy = 0; dy < dh; dy++) {
    let o = dy * dw * cn;
    for (let dx = 0; dx < dw; dx++) {
      for (let c = 0; c < cn; c++, o++) {
        let sum = 0;
        for (let yy = 0; yy < ky; yy++) {
          let j = (dy * ky + yy) * rowStride + dx * kx * cn + c;
          for (let xx = 0; xx < kx; xx++, j += cn) sum += src[j];
        }
        dst[o] = sat8(rint(fround(sum * scale)));
      }
    }
  }
  return out;
}

/** OpenCV's computeResizeAreaTab: (source index, destination index, float32 weight) triples. */
function areaTab(ssize, dsize, scale) {
  const si = [], di = [], alpha = [];
  for (let dx = 0; dx < dsize; dx++) {
    const fsx1 = dx * scale;
    const fsx2 = fsx1 + scale;
    const cell = Math.min(scale, ssize - fsx1);
    let sx1 = Math.ceil(fsx1), sx2 = Math.floor(fsx2);
    sx2 = Math.min(sx2, ssize - 1);
    sx1 = Math.min(sx1, sx2);
    if (sx1 - fsx1 > 1e-3) {
      si.push(sx1 - 1); di.push(dx); alpha.push(fround((sx1 - fsx1) / cell));
    }
    for (let sx = sx1; sx < sx2; sx++) {
      si.push(sx); di.push(dx); alpha.push(fround(1.0 / cell));
    }
    if (fsx2 - sx2 > 1e-3) {
      si.push(sx2); di.push(dx); alpha.push(fround(Math.min(Math.min(fsx2 - sx2, 1.0), cell) / cell));
    }
  }
  return { si, di, alpha };
}

function areaGeneral(img, cn, dw, dh, scaleX, scaleY) {
  const src = img.data, sw = img.width, sh = img.height;
  const xt = areaTab(sw, dw, scaleX), yt = areaTab(sh, dh, scaleY);
  const out = makeImage(dw, dh, cn);
  const dst = out.data;
  const width = dw * cn;
  const buf = new Float32Array(width), sum = new Float32Array(width);
  const flush = (dy) => {
    const o = dy * width;
    for (let i = 0; i < width; i++) dst[o + i] = sat8(rint(sum[i]));
  };
  let prev = yt.di[0];
  for (let j = 0; j < yt.si.length; j++) {
    const beta = yt.alpha[j], dy = yt.di[j], row = yt.si[j] * sw * cn;
    buf.fill(0);
    for (let k = 0; k < xt.si.length; k++) {
      const s = row + xt.si[k] * cn, d = xt.di[k] * cn, a = xt.alpha[k];
      for (let c = 0; c < cn; c++) buf[d + c] = fround(buf[d + c] + fround(src[s + c] * a));
    }
    if (dy !== prev) {
      flush(prev);
      for (let i = 0; i < width; i++) sum[i] = fround(beta * buf[i]);
      prev = dy;
    } else {
      for (let i = 0; i < width; i++) sum[i] = fround(sum[i] + fround(beta * buf[i]));
    }
  }
  flush(prev);
  return out;
}

const COEF_SCALE = 2048; // INTER_RESIZE_COEF_SCALE (11 bits)

/** OpenCV's INTER_AREA upscale: bilinear with area-style fractions, 11-bit fixed point. */
function areaUpscale(img, cn, dw, dh, scaleX, scaleY, invX, invY) {
  const src = img.data, sw = img.width, sh = img.height;
  // Horizontal tables: source x, two fixed-point weights; xmax = first column clamped to the edge.
  const xofs = new Int32Array(dw), ax0 = new Int32Array(dw), ax1 = new Int32Array(dw);
  let xmax = dw;
  for (let dx = 0; dx < dw; dx++) {
    let sx = Math.floor(dx * scaleX);
    let fx = fround((dx + 1) - (sx + 1) * invX);
    fx = fx <= 0 ? 0 : fround(fx - Math.floor(fx));
    if (sx + 1 >= sw) {
      xmax = Math.min(xmax, dx);
      if (sx >= sw - 1) { fx = 0; sx = sw - 1; }
    }
    xofs[dx] = sx;
    ax0[dx] = rint(fround((1 - fx) * COEF_SCALE));
    ax1[dx] = rint(fround(fx * COEF_SCALE));
  }
  const width = dw * cn;
  const hrow = (sy) => { // one horizontally resized source row, values scaled by 2048
    const out = new Int32Array(width);
    const r = sy * sw * cn;
    for (let dx = 0; dx < dw; dx++) {
      const s = r + xofs[dx] * cn;
      for (let c = 0; c < cn; c++) {
        out[dx * cn + c] = dx < xmax ? src[s + c] * ax0[dx] + src[s + c + cn] * ax1[dx] : src[s + c] * COEF_SCALE;
      }
    }
    return out;
  };
  const out = makeImage(dw, dh, cn);
  const dst = out.data;
  // The vertical pass as OpenCV's SIMD code computes it (for every column: checked against cv2
  // 4.14 on 150 random upscales, widths 1..119, 1/3/4 channels):
  // ((((S0 >> 4) * b0) >> 16) + (((S1 >> 4) * b1) >> 16) + 2) >> 2.
  for (let dy = 0; dy < dh; dy++) {
    const sy = Math.floor(dy * scaleY);
    let fy = fround((dy + 1) - (sy + 1) * invY);
    fy = fy <= 0 ? 0 : fround(fy - Math.floor(fy));
    const b0 = rint(fround((1 - fy) * COEF_SCALE)), b1 = rint(fround(fy * COEF_SCALE));
    const s0 = hrow(Math.min(Math.max(sy, 0), sh - 1)), s1 = hrow(Math.min(Math.max(sy + 1, 0), sh - 1));
    const o = dy * width;
    for (let x = 0; x < width; x++) {
      const v = (Math.floor(((s0[x] >> 4) * b0) / 65536) + Math.floor(((s1[x] >> 4) * b1) / 65536) + 2) >> 2;
      dst[o + x] = sat8(v);
    }
  }
  return out;
}

// ------------------------------------------------------------------------------ warpAffine

/**
 * cv::getRotationMatrix2D: 2x3 (row-major, 6 numbers) rotation by `angle` degrees about
 * (cx, cy) with isotropic `scale`. OpenCV takes the centre as Point2f, so it is rounded to
 * float32 here too.
 */
export function rotationMatrix2D(cx, cy, angle, scale) {
  const a = angle * (Math.PI / 180);
  const alpha = Math.cos(a) * scale, beta = Math.sin(a) * scale;
  const fx = fround(cx), fy = fround(cy);
  return [alpha, beta, (1 - alpha) * fx - beta * fy, -beta, alpha, beta * fx + (1 - alpha) * fy];
}

/** The inverse of a 2x3 affine map, computed as cv::warpAffine does (in double). */
export function invertAffine(m) {
  let d = m[0] * m[4] - m[1] * m[3];
  d = d !== 0 ? 1 / d : 0;
  const a11 = m[4] * d, a22 = m[0] * d, a12 = -m[1] * d, a21 = -m[3] * d;
  const b1 = -a11 * m[2] - a12 * m[5];
  const b2 = -a21 * m[2] - a22 * m[5];
  return [a11, a12, b1, a21, a22, b2];
}

/**
 * cv2.warpAffine(grey, m, (dw, dh), flags=INTER_LINEAR, borderMode=BORDER_REPLICATE) for a
 * one-channel 8-bit image, bit-exact with cv2 4.14: the inverse map in 10-bit fixed point
 * (AB_SCALE 1024, rounding half to even, +16), source positions in 1/32 pixel
 * (INTER_TAB_SIZE 32), bilinear weights (32-tx)(32-ty)*32 ... summing to 2^15, result
 * (sum + 2^14) >> 15. Coordinates outside the image take the nearest edge pixel.
 */
export function warpAffineGrey(grey, m, dw, dh) {
  if (channelsOf(grey) !== 1) throw new Error("warpAffineGrey: expected a one-channel image");
  const [m0, m1, m2, m3, m4, m5] = invertAffine(m);
  const { data: src, width: sw, height: sh } = grey;
  const out = makeImage(dw, dh, 1);
  const dst = out.data;
  const adelta = new Int32Array(dw), bdelta = new Int32Array(dw);
  for (let x = 0; x < dw; x++) {
    adelta[x] = rint(m0 * x * 1024);
    bdelta[x] = rint(m3 * x * 1024);
  }
  const clampX = (v) => (v < 0 ? 0 : v >= sw ? sw - 1 : v);
  const clampY = (v) => (v < 0 ? 0 : v >= sh ? sh - 1 : v);
  for (let y = 0; y < dh; y++) {
    const x0f = rint((m1 * y + m2) * 1024) + 16;
    const y0f = rint((m4 * y + m5) * 1024) + 16;
    for (let x = 0; x < dw; x++) {
      const X = (x0f + adelta[x]) >> 5, Y = (y0f + bdelta[x]) >> 5;
      const ix = X >> 5, iy = Y >> 5, tx = X & 31, ty = Y & 31;
      const x0 = clampX(ix), x1 = clampX(ix + 1), r0 = clampY(iy) * sw, r1 = clampY(iy + 1) * sw;
      const sum = src[r0 + x0] * (32 - tx) * (32 - ty) + src[r0 + x1] * tx * (32 - ty)
        + src[r1 + x0] * (32 - tx) * ty + src[r1 + x1] * tx * ty;
      dst[y * dw + x] = (sum * 32 + 16384) >> 15;
    }
  }
  return out;
}
