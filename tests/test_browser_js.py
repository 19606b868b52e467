"""The in-browser pipeline's JavaScript core (ferjax/browser/src) against the Python pipeline: runs
`npm test` in ferjax/browser (node --test on the fixtures tools/browser_fixtures.py wrote: grey,
INTER_AREA, warpAffine and crops bit-exact, YuNet against cv2.FaceDetectorYN, the whole pipeline
against ferjax.Analyzer with probabilities within 1e-4 on onnxruntime-web). The default classifier
is exported to ONNX first (this session's cache; about 11 s when no other test did it). Skips,
saying why, without node, without `npm ci` in ferjax/browser, or without the onnx extra. A second
test recomputes the fixtures' OpenCV and crop values with this Python (no Node needed), so that the
fixtures cannot silently drift from the pipeline they stand for (e.g. after an OpenCV upgrade)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferjax.realtime import align
from ferjax.realtime.detect import Detection

BROWSER = Path(__file__).resolve().parents[1] / "ferjax" / "browser"
FIXTURES = BROWSER / "test" / "fixtures"


def test_browser_js_pipeline_matches_python():
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not installed (the browser pipeline's tests run on Node >= 20)")
    if not (BROWSER / "node_modules" / "onnxruntime-web").is_dir():
        pytest.skip("onnxruntime-web is not installed: run `npm ci` in ferjax/browser")
    pytest.importorskip("jax2onnx", reason="the onnx extra (jax2onnx, onnx, onnxruntime) exports the classifier")
    from ferjax import export, pretrained  # noqa: PLC0415

    env = {**os.environ, "FERJAX_CLASSIFIER_ONNX": str(export.cached_onnx(pretrained.DEFAULT))}
    proc = subprocess.run([npm, "test"], cwd=BROWSER, env=env, capture_output=True, text=True, timeout=600)
    report = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, report
    assert "# fail 0" in proc.stdout and "# skipped 0" in proc.stdout, report


def test_fixtures_match_this_opencv_and_crop_face():
    meta = json.loads((FIXTURES / "fixtures.json").read_text())
    blob = (FIXTURES / "fixtures.bin").read_bytes()

    def array(ref):
        n = int(np.prod(ref["shape"]))
        return np.frombuffer(blob, np.dtype(ref["dtype"]).newbyteorder("<"), n, ref["offset"]).reshape(ref["shape"])

    rgb = {name: array(ref) for name, ref in meta["images"].items()}
    grey = cv2.cvtColor(rgb[meta["grey"]["image"]], cv2.COLOR_RGB2GRAY)
    assert np.array_equal(grey, array(meta["grey"]["expected"])), f"fixtures made with OpenCV {meta['opencv']}"
    for case in meta["area"]:
        if "grey_region" in case:
            x, y, w, h = case["grey_region"]
            src = cv2.cvtColor(rgb[case["image"]], cv2.COLOR_RGB2GRAY)[y:y + h, x:x + w]
        else:
            src = rgb[case["image"]]
        assert np.array_equal(cv2.resize(src, tuple(case["size"]), interpolation=cv2.INTER_AREA), array(case["expected"]))
    for case in meta["crop"]:
        det = Detection(tuple(case["det"]["box"]), case["det"]["score"], np.array(case["det"]["landmarks"]))
        crop = align.crop_face(cv2.cvtColor(rgb[case["image"]], cv2.COLOR_RGB2GRAY), det, 48, case["margin"], True)
        assert np.array_equal(crop, array(case["expected"])), case["det"]
