"""`ferjax doctor`: what this machine gives ferjax, checked the way the real-time pipeline uses it.

    ferjax doctor [--frame VIDEO_OR_IMAGE] [--models-dir DIR] [--json OUT.json] [--require-gpu]

Prints the third-party model files found (where, and whether their sha256 is the pinned one),
OpenCV's build information (CUDA, cuDNN, CUDA modules), the CUDA device count, the DNN CUDA
targets, the Haar CUDA cascade's file, a one-frame run of each detector (the backend it chose, the
backend it ended on, and why), and JAX's devices with a small convolution run on them, all in one
process, importing OpenCV before JAX as ferjax does (that order is where a cuDNN clash shows).
`--require-gpu` exits 1 unless every OpenCV detector and JAX ran on the GPU: use it to record a
GPU run. Without a GPU it reports the CPU fallbacks and exits 0.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

ENV_KEYS = ("LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "JAX_PLATFORMS", "XLA_PYTHON_CLIENT_PREALLOCATE",
            "XLA_PYTHON_CLIENT_MEM_FRACTION", "OPENCV_LOG_LEVEL", "FERJAX_MODELS_DIR")
ENV_AT_START = {k: os.environ.get(k) for k in ENV_KEYS}  # before cv2's import, which may extend LD_LIBRARY_PATH

import cv2  # noqa: E402 -- before JAX, as in ferjax's real-time process

BUILD_NOTE = "see BUILD.md in the ferjax repository for building OpenCV with CUDA"
BUILD_KEYS = ("NVIDIA CUDA", "NVIDIA GPU arch", "NVIDIA PTX archs", "cuDNN", "To be built", "Video I/O", "FFMPEG")


def read_frame(path: Path | None) -> Any:
    """The first frame of a video, or an image; without one, a grey frame (the detectors run on it
    and find no face)."""
    if path is None:
        import numpy as np  # noqa: PLC0415

        return np.full((360, 640, 3), 128, np.uint8)
    img = cv2.imread(str(path)) if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp") else None
    if img is None:
        ok, img = cv2.VideoCapture(str(path)).read()
        if not ok:
            raise SystemExit(f"cannot read a frame from {path} (give --frame a video or an image)")
    return img


def opencv_report() -> dict[str, Any]:
    from ferjax.realtime import cuda

    probe = cuda.CudaProbe()
    info = cv2.getBuildInformation().splitlines()
    out: dict[str, Any] = {
        "version": cv2.__version__, "file": cv2.__file__, "has_cv2_data": hasattr(cv2, "data"),
        "build": [l.strip() for l in info if any(l.strip().startswith(k) for k in BUILD_KEYS)],
        "built_with_cuda": probe.built_with_cuda(),
        "cuda_cascade_module": probe.cascade_factory() is not None,
    }
    try:
        out["device_count"] = probe.device_count()
    except (AttributeError, cv2.error) as e:
        out["device_count"] = f"error: {cuda.first_line(e)}"
    out["device_problem"] = cuda.device_problem(probe)
    if isinstance(out["device_count"], int) and out["device_count"] > 0:
        try:
            d = cv2.cuda.DeviceInfo(0)
            out["device0"] = {"name": d.name(), "compute_capability": f"{d.majorVersion()}.{d.minorVersion()}",
                              "compatible": bool(d.isCompatible())}
        except (AttributeError, cv2.error) as e:
            out["device0"] = f"error: {cuda.first_line(e)}"
    try:
        out["dnn_cuda_targets"] = cuda.target_names(probe.dnn_cuda_targets())
    except cv2.error as e:
        out["dnn_cuda_targets"] = f"error: {cuda.first_line(e)}"
    return out


def haar_cuda_report(models_dir: str | None) -> dict[str, Any]:
    from ferjax.realtime import cuda, models

    path = models.find(models.HAAR_CUDA, models_dir)
    return {"file": str(path) if path else None,
            "problem": cuda.cascade_problem(path) if path else f"not found in "
            f"{', '.join(map(str, models.search_dirs(models_dir)))}; download {models.HAAR_CUDA.url}"}


def model_files_report(models_dir: str | None) -> list[dict[str, Any]]:
    """Each third-party model file: where it was found (or not) and its sha256 against the pinned one."""
    from ferjax.atomic import file_sha256
    from ferjax.realtime import models

    out = []
    for f in models.KNOWN_FILES:
        row: dict[str, Any] = {"name": f.name, "pinned_sha256": f.sha256}
        try:
            path = models.find(f, models_dir)
        except OSError as e:  # a file with the pinned name but another sha256 (ModelFileError)
            row.update(path=None, problem=str(e))
        else:
            row.update(path=str(path) if path else None, sha256=file_sha256(path) if path else None,
                       problem=None if path else f"not found; download {f.url}")
        out.append(row)
    return out


def detector_report(name: str, frame: Any, models_dir: str | None) -> dict[str, Any]:
    """Builds detector `name`, runs two frames (the first may compile or fall back) and reports."""
    from ferjax.realtime import cuda
    from ferjax.registry import DETECTORS

    kwargs = {"models_dir": models_dir} if models_dir else {}
    try:
        det = DETECTORS.create_accepting(name, kwargs)
    except (FileNotFoundError, ImportError, OSError) as e:
        return {"detector": name, "skipped": str(e).splitlines()[0]}
    out = {"detector": name, "backend_at_start": det.backend, "reason_at_start": getattr(det, "backend_reason", "")}
    try:
        t0 = time.perf_counter()
        first = det(frame)
        t1 = time.perf_counter()
        second = det(frame)
        t2 = time.perf_counter()
    except Exception as e:  # noqa: BLE001 -- a check script reports every failure and goes on
        return {**out, "error": f"{type(e).__name__}: {cuda.first_line(e)}"}
    return {**out, "backend": det.backend, "reason": getattr(det, "backend_reason", ""),
            "faces": len(second), "faces_first_frame": len(first),
            "first_frame_ms": round((t1 - t0) * 1e3, 2), "second_frame_ms": round((t2 - t1) * 1e3, 2)}


def jax_report() -> dict[str, Any]:
    """JAX's devices and a small convolution on the default one (this loads cuDNN on a GPU)."""
    try:
        import jax
        import jax.numpy as jnp

        x = jnp.ones((1, 3, 64, 64), jnp.float32)
        w = jnp.ones((8, 3, 3, 3), jnp.float32)
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME")
        value = float(y[0, 0, 32, 32])
        return {"version": jax.__version__, "backend": jax.default_backend(),
                "devices": [f"{d.platform}:{d.id} {d.device_kind}" for d in jax.devices()],
                "conv_ok": value == 27.0}
    except Exception as e:  # noqa: BLE001 -- e.g. "Loaded runtime CuDNN library ... but source was compiled with ..."
        return {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"}


def nvidia_smi() -> list[str] | str:
    if not shutil.which("nvidia-smi"):
        return "nvidia-smi not found"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"nvidia-smi failed: {e}"
    return out.stdout.strip().splitlines() or out.stderr.strip()


def run(frame_path: Path | None, models_dir: str | None, detectors: Sequence[str]) -> dict[str, Any]:
    """The whole report as a dict."""
    frame = read_frame(frame_path)
    report: dict[str, Any] = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                              "command": " ".join(sys.argv), "host": platform.node(),
                              "frame": str(frame_path), "nvidia_smi": nvidia_smi(),
                              "env": ENV_AT_START, "model_files": model_files_report(models_dir),
                              "opencv": opencv_report(), "haar_cuda_cascade": haar_cuda_report(models_dir)}
    report["detectors"] = [detector_report(n, frame, models_dir) for n in detectors]
    report["jax"] = jax_report()
    return report


def gpu_complete(report: dict[str, Any]) -> bool:
    """True when every OpenCV detector that ran ended on CUDA and JAX ran on a GPU."""
    opencv = [d for d in report["detectors"] if d["detector"] != "mtcnn" and "skipped" not in d]
    return bool(opencv) and all(str(d.get("backend", "")).startswith("opencv-cuda") for d in opencv) \
        and report["jax"].get("backend") == "gpu" and report["jax"].get("conv_ok", False)


def print_report(r: dict[str, Any]) -> None:
    cv = r["opencv"]
    print(f"{r['date']} on {r['host']}: {r['command']}")
    print(f"nvidia-smi: {r['nvidia_smi']}")
    print(f"environment: { {k: v for k, v in r['env'].items() if v is not None} }")
    for m in r["model_files"]:
        state = m["problem"] or ("sha256 as pinned" if m["pinned_sha256"] and m["sha256"] == m["pinned_sha256"]
                                 else f"sha256 {m['sha256']}")
        print(f"model file {m['name']}: {m['path'] or '-'} ({state})")
    print(f"OpenCV {cv['version']} ({cv['file']}); cv2.data: {cv['has_cv2_data']}")
    for line in cv["build"]:
        print(f"  {line}")
    print(f"CUDA device count: {cv['device_count']}" + (f" ({cv['device_problem']})" if cv["device_problem"] else ""))
    if "device0" in cv:
        print(f"  device 0: {cv['device0']}")
    print(f"DNN CUDA targets (getAvailableTargets(DNN_BACKEND_CUDA)): {cv['dnn_cuda_targets']}")
    print(f"cv2.cuda.CascadeClassifier: {cv['cuda_cascade_module']}; old-format cascade: "
          f"{r['haar_cuda_cascade']['file']} {r['haar_cuda_cascade']['problem'] or '(format ok)'}")
    for d in r["detectors"]:
        if "skipped" in d:
            print(f"detector {d['detector']}: skipped: {d['skipped']}")
        elif "error" in d:
            print(f"detector {d['detector']}: started {d['backend_at_start']}, ERROR {d['error']}")
        else:
            why = f"; {d['reason']}" if d["reason"] else ""
            print(f"detector {d['detector']}: {d['backend_at_start']} -> {d['backend']}, {d['faces']} face(s), "
                  f"{d['first_frame_ms']} ms then {d['second_frame_ms']} ms{why}")
    print(f"JAX: {r['jax']}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ferjax doctor", description=__doc__.split("\n\n")[0])
    p.add_argument("--frame", type=Path, default=None,
                   help="a video (first frame) or an image to run the detectors on (default: a grey frame)")
    p.add_argument("--models-dir", default=None, help="detector files (else $FERJAX_MODELS_DIR, ~/.cache)")
    p.add_argument("--detectors", default="haar,ssd_resnet10,yunet,mtcnn")
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    p.add_argument("--require-gpu", action="store_true", help="exit 1 unless everything ran on the GPU")
    a = p.parse_args(argv)
    report = run(a.frame, a.models_dir, [n for n in a.detectors.split(",") if n])
    report["gpu_complete"] = gpu_complete(report)
    print_report(report)
    print(f"everything on the GPU: {report['gpu_complete']}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=2, default=str))
    return 1 if a.require_gpu and not report["gpu_complete"] else 0


if __name__ == "__main__":
    sys.exit(main())
