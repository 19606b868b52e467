"""Table II-style benchmark: ms per stage and end-to-end FPS for every detector on real videos.

    python -m ferjax.run --experiment=realtime_bench --workdir=runs/bench
    python -m ferjax.run --experiment=realtime_bench:quick --workdir=runs/bench   # 120 frames each
"""
from __future__ import annotations

import ml_collections

from ferjax.experiments import realtime

VARIANTS = ("quick",)

def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    c = realtime.get_config(None)
    c.task = "realtime_bench"
    c.detectors = "haar,ssd_resnet10,yunet,mtcnn"
    c.media_dir = "../shared/media"
    c.videos = "one_face_pexels_640x360.mp4,no_face_cartoon.mp4,one_face_short.mp4,many_faces_1080p.mp4"
    c.smoothing = False
    c.video_out = ""
    c.jsonl_out = ""
    c.display = "no"
    c.warmup_frames = 5
    # Python of an environment with `fer` + TensorFlow (e.g. /tmp/mtcnn_env/bin/python): the fer
    # package's pipeline runs on the same videos as a peer. "" skips it.
    c.peer_python = ""
    c.allow_random_classifier = False  # the shipped classifier's weights are installed with ferjax
    if variant == "quick":
        c.max_frames = 120
    elif variant:
        raise ValueError(f"unknown realtime_bench variant {variant!r} (known: quick)")
    return c
