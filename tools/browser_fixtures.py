"""Writes the fixtures that ferjax/browser/test/*.test.mjs check the JavaScript pipeline against:
real faces (frames of shared/media videos, FER2013 PrivateTest rows upscaled as the deployed
measurement does), what OpenCV makes of them (grey, INTER_AREA, warpAffine, YuNet's raw ONNX
outputs and cv2.FaceDetectorYN's detections), ferjax's crops and the classifier's probabilities.

    python tools/browser_fixtures.py [--shared ../shared] [--out ferjax/browser/test/fixtures]

Output: fixtures.json (metadata, cases, expected values) and fixtures.bin (the arrays it names:
{"offset", "dtype", "shape"} into the .bin, little-endian). About 0.55 MB.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from deployed_accuracy import fer_private_test, upscale  # noqa: E402  (same folder)

YUNET = REPO / "ferjax" / "assets" / "face_detection_yunet_2026may.onnx"
YUNET_OUTPUTS = ["cls_8", "cls_16", "cls_32", "obj_8", "obj_16", "obj_32",
                 "bbox_8", "bbox_16", "bbox_32", "kps_8", "kps_16", "kps_32"]


class Blob:
    """Arrays appended to one binary file, referenced from the JSON by offset, dtype and shape."""

    def __init__(self):
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, array: np.ndarray) -> dict:
        array = np.ascontiguousarray(array)
        if array.dtype not in (np.uint8, np.float32):
            array = array.astype(np.float32)
        data = array.astype(array.dtype.newbyteorder("<")).tobytes()
        pad = (-self.size) % 8
        self.parts.append(b"\0" * pad)
        self.size += pad
        ref = {"offset": self.size, "dtype": str(array.dtype), "shape": list(array.shape)}
        self.parts.append(data)
        self.size += len(data)
        return ref


def frame(video: Path, index: int) -> np.ndarray:
    """BGR frame `index` of a video."""
    cap = cv2.VideoCapture(str(video))
    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, bgr = cap.read()
    cap.release()
    if not ok:
        raise SystemExit(f"cannot read frame {index} of {video}")
    return bgr


def images(shared: Path) -> dict[str, np.ndarray]:
    """The fixture images, BGR uint8 (grey FER faces replicated to 3 channels)."""
    one = frame(shared / "media" / "one_face_pexels_640x360.mp4", 0)[20:360, 300:560]  # the face, 260x340
    one = cv2.resize(one, (130, 170), interpolation=cv2.INTER_AREA)
    rot = cv2.warpAffine(one, cv2.getRotationMatrix2D((65, 85), 20, 1.0), (130, 170),
                         flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    many = frame(shared / "media" / "many_faces_1080p.mp4", 0)[548:724, 660:980]  # three faces, 320x176
    fer = fer_private_test(shared / "data" / "fer2013" / "fer2013.csv.gz", limit=2)
    out = {"one_face": one, "one_face_rot": rot, "many_faces": many}
    for i, (img48, _label) in enumerate(fer):
        out[f"fer_{i}"] = cv2.cvtColor(upscale(img48), cv2.COLOR_GRAY2BGR)
    return out


def yunet_raw(bgr: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """YuNet's 12 raw outputs from onnxruntime on FaceDetectorYN's input blob, and FaceDetectorYN's
    own final rows (x, y, w, h, 5 landmarks, score) on the same image."""
    import onnxruntime as ort  # noqa: PLC0415

    h, w = bgr.shape[:2]
    pw, ph = ((w - 1) // 32 + 1) * 32, ((h - 1) // 32 + 1) * 32
    padded = cv2.copyMakeBorder(bgr, 0, ph - h, 0, pw - w, cv2.BORDER_CONSTANT, value=0)
    blob = cv2.dnn.blobFromImage(padded)
    sess = ort.InferenceSession(str(YUNET), providers=["CPUExecutionProvider"])
    raw = dict(zip(YUNET_OUTPUTS, sess.run(YUNET_OUTPUTS, {"input": blob})))
    det = cv2.FaceDetectorYN.create(str(YUNET), "", (w, h), 0.6, 0.3, 5000)
    _, rows = det.detect(bgr)
    return raw, (np.zeros((0, 15), np.float32) if rows is None else rows)


def det_json(d) -> dict:
    return {"box": [float(v) for v in d.box], "score": float(d.score),
            "landmarks": None if d.landmarks is None else d.landmarks.tolist()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", default=str(REPO.parent / "shared"))
    p.add_argument("--out", default=str(REPO / "ferjax" / "browser" / "test" / "fixtures"))
    args = p.parse_args(argv)

    from ferjax import export  # noqa: PLC0415
    from ferjax.analyzer import Analyzer  # noqa: PLC0415
    from ferjax.pretrained import DEFAULT, weights_sha256  # noqa: PLC0415
    from ferjax.realtime import align  # noqa: PLC0415
    from ferjax.realtime.detect import Detection  # noqa: PLC0415

    blob, meta = Blob(), {"opencv": cv2.__version__, "model": DEFAULT}
    imgs = images(Path(args.shared))
    # Stored RGB, or grey (shape [h, w]) for the FER faces, whose three channels are equal.
    meta["images"] = {k: blob.add(v[..., 0] if k.startswith("fer_") else v[..., ::-1]) for k, v in imgs.items()}

    # Primitives: grey, INTER_AREA (2x, integer 5x, fractional, upscale), warpAffine.
    one = imgs["one_face"]
    grey = cv2.cvtColor(one, cv2.COLOR_BGR2GRAY)
    meta["grey"] = {"image": "one_face", "expected": blob.add(grey)}
    area = []
    for src, size in [("one_face", (65, 85)), ("one_face", (26, 34)), ("one_face", (57, 71)),
                      ("many_faces", (80, 44)), ("many_faces", (107, 59))]:
        rgb = imgs[src][..., ::-1]
        area.append({"image": src, "size": list(size),
                     "expected": blob.add(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))})
    for region, size in [((60, 40, 31, 31), 48), ((10, 20, 100, 100), 48), ((5, 5, 47, 47), 48)]:
        x, y, w, h = region
        area.append({"image": "one_face", "grey_region": list(region), "size": [size, size],
                     "expected": blob.add(cv2.resize(grey[y:y + h, x:x + w], (size, size),
                                                     interpolation=cv2.INTER_AREA))})
    meta["area"] = area

    # crop_face on chosen detections: axis-aligned, rotated, beyond max_roll, off the image, margin.
    crop_cases = []
    eyes = lambda angle, cx, cy, r: np.array(  # noqa: E731
        [[cx - r * np.cos(np.radians(angle)), cy - r * np.sin(np.radians(angle))],
         [cx + r * np.cos(np.radians(angle)), cy + r * np.sin(np.radians(angle))],
         [cx, cy + 15], [cx - 10, cy + 30], [cx + 10, cy + 30]])
    for box, angle, margin in [((20.3, 30.7, 110.2, 140.9), 0.4, 0.0), ((20.3, 30.7, 110.2, 140.9), 12.5, 0.0),
                               ((20.3, 30.7, 110.2, 140.9), -30.0, 0.0), ((20.3, 30.7, 110.2, 140.9), 60.0, 0.0),
                               ((-15.2, 100.1, 60.6, 190.4), 7.0, 0.0), ((90.5, -20.2, 140.1, 30.3), 0.0, 0.0),
                               ((40.0, 50.0, 60.5, 74.5), 0.0, 0.0), ((40.0, 50.0, 60.5, 74.5), 3.0, 0.25),
                               ((30.1, 40.2, 100.3, 120.4), -0.99, 0.2)]:
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        det = Detection(box, 0.9, eyes(angle, cx, cy - 10, 18))
        crop = align.crop_face(grey, det, 48, margin, True)
        crop_cases.append({"image": "one_face", "det": det_json(det), "margin": margin,
                           "angle": align.eye_angle(det.landmarks), "expected": blob.add(crop)})
    meta["crop"] = crop_cases

    # YuNet raw outputs (onnxruntime) and FaceDetectorYN's detections, for two images.
    yunet = []
    for name in ("many_faces", "fer_0"):
        raw, rows = yunet_raw(imgs[name])
        yunet.append({"image": name, "outputs": {k: blob.add(v) for k, v in raw.items()},
                      "opencv_rows": rows.tolist()})
    meta["yunet"] = yunet

    # The whole pipeline: ferjax.Analyzer (JAX, default model) in photo and video mode.
    onnx_path = export.cached_onnx(DEFAULT)
    meta["classifier"] = {"file": onnx_path.name, "sha256": json.loads(export.card_path(onnx_path).read_text())["sha256"],
                          "weights_sha256": weights_sha256(DEFAULT)}
    onnx_pred = export.load_onnx_predictor(DEFAULT)
    analyses = []
    for name, video_width in [("one_face", 65), ("one_face_rot", 100), ("many_faces", 240),
                              ("fer_0", None), ("fer_1", None)]:
        modes = [False] + ([True] if video_width else [])
        analyzer = Analyzer(detector_args={"detect_width": video_width or 320})
        pipe = analyzer.pipeline(tracking=False)
        for video in modes:
            bgr = imgs[name]
            dets = pipe.detect(bgr, analyzer.detection_width(bgr, video))
            crops = pipe.crops(bgr, dets)
            probs = pipe.classify(crops)
            faces = analyzer.analyze_frames([bgr], video=video)[0]  # the public path gives the same
            assert [f.box for f in faces] == [d.box for d in dets]
            analyses.append({
                "image": name, "video": video, "detect_width": video_width or 320,
                "detection_width": analyzer.detection_width(bgr, video),
                "dets": [det_json(d) for d in dets], "labels": [f.label for f in faces],
                "crops": blob.add(crops.reshape(-1, 48, 48)),
                "probabilities": blob.add(np.asarray(probs, np.float32).reshape(-1, 7)),
                "probabilities_onnxruntime": blob.add(np.asarray(onnx_pred(crops), np.float32).reshape(-1, 7)),
            })
    meta["analyses"] = analyses

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fixtures.bin").write_bytes(b"".join(blob.parts))
    (out / "fixtures.json").write_text(json.dumps(meta, indent=1) + "\n")
    total = blob.size + (out / "fixtures.json").stat().st_size
    print(f"wrote {out}/fixtures.json and fixtures.bin ({total / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
