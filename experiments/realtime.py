"""Real-time expression recognition on a webcam, video file, RTSP/HTTP stream or image folder.

    python -m ferjax.run --experiment=realtime --config.source=video.mp4 --workdir=runs/rt
    python -m ferjax.run --experiment=realtime:mtcnn --config.source=0      # webcam 0, MTCNN

Variants name the detector: yunet (default), ssd, haar, mtcnn.
"""
from __future__ import annotations

import ml_collections

from ferjax import pretrained

VARIANTS = {"yunet": "yunet", "ssd": "ssd_resnet10", "ssd_resnet10": "ssd_resnet10", "haar": "haar",
            "mtcnn": "mtcnn"}


def detector_args() -> ml_collections.ConfigDict:
    """Per-detector keyword arguments; detectors see frames downscaled to `detect_width`: "auto"
    adapts it per stream to the faces found (full-width rescans every `rescan_every` frames and
    whenever a face is lost; faces too small for the working width followed in track windows at
    full resolution; ferjax/realtime/width.py), a number (e.g. 320) fixes it.
    `use_cuda`: try the OpenCV CUDA path (BUILD.md); `cascade` / `cuda_cascade`: Haar files
    ("" = found in cv2.data / the model directories). Haar runs the `fer` package's settings
    (scaleFactor 1.1, minNeighbors 5, minSize 50, no histogram equalisation: `equalize`)."""
    return ml_collections.ConfigDict({
        "haar": {"scale_factor": 1.1, "min_neighbors": 5, "min_size": 50, "equalize": False,
                 "detect_width": "auto", "use_cuda": True, "cascade": "", "cuda_cascade": ""},
        "ssd_resnet10": {"threshold": 0.5, "input_size": (300, 300), "fmt": "auto", "fp16": False,
                         "use_cuda": True},
        "yunet": {"threshold": 0.6, "detect_width": "auto", "use_cuda": True, "fp16": False},
        "mtcnn": {"detect_width": "auto", "min_face_size": 20, "threshold": 0.9},
    })


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "realtime"
    c.source = "0"                 # webcam index, video file, rtsp://... / http://... URL, or image folder
    c.detector = VARIANTS[variant or "yunet"]
    c.detector_args = detector_args()
    c.rescan_every = 30            # detect_width "auto": frames between full-width scans
    c.models_dir = ""              # detector files; else $FERJAX_MODELS_DIR or ~/.cache/ferjax/models
    c.mtcnn_weights_dir = ""       # pnet/rnet/onet.lz4 of mtcnn==1.0.0; else <models dir>/mtcnn
    c.pretrained = pretrained.VIDEO_DEFAULT  # the shipped video model (one home: ferjax.pretrained.VIDEO_DEFAULT)
    c.classifier = ""              # a registered classifier with random weights (demos only)
    c.allow_random_classifier = False
    c.backend = "auto"             # classifier on jax, onnxruntime (onnx extra) or auto (ferjax.analyzer.resolve_backend)
    c.buckets = (1, 2, 4, 8, 16, 32)
    c.align = True                 # rotate crops so the eyes are level when landmarks exist
    c.margin = 0.0
    c.max_faces = 64
    c.smoothing = True             # IoU tracker + EMA of each face's probabilities
    c.smoothing_alpha = 0.4
    c.smoothing_iou = 0.3
    c.max_frames = 0               # 0: until the source ends
    c.warmup_frames = 0
    c.video_out = "annotated.mp4"  # relative to workdir; "" disables
    c.jsonl_out = "frames.jsonl"
    c.display = "auto"             # auto: a live window only where a display exists; yes; no
    c.reconnects = 3
    c.num_threads = 0              # cv2.setNumThreads; 0: all cores
    return c
