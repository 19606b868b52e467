"""The adaptive working width (`detect_width="auto"`, ferjax/realtime/width.py) and tracking ids."""
from __future__ import annotations

import cv2
import ml_collections
import numpy as np
import pytest

from ferjax.analyzer import build_detector
from ferjax.components.classifiers import EMOTIONS
from ferjax.config import FIELD_RULES
from ferjax.realtime import width as W
from ferjax.realtime.detect import Detection, ResizingDetector
from ferjax.realtime.pipeline import Pipeline
from ferjax.realtime.tracker import IoUTracker
from ferjax.registry import RegistryError
from conftest import MEDIA, MODELS, require_detector

FRAME = (720, 1280)


class Squares(ResizingDetector):
    """Finds white squares whose side is at least `min_side` in the image it detects on."""

    name = "squares"
    reliable_face = 16.0

    def __init__(self, detect_width="auto", min_side: int = 12):
        super().__init__(detect_width)
        self.min_side, self.seen = min_side, []

    def detect_small(self, frame):
        self.seen.append(frame.shape[1])
        grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        n, _, stats, _ = cv2.connectedComponentsWithStats((grey > 127).astype(np.uint8))
        return [Detection((float(x), float(y), float(x + w), float(y + h)), 1.0)
                for x, y, w, h, _ in stats[1:n] if min(w, h) >= self.min_side]


def frame(*squares):
    """A black 1280x720 frame with white squares (x, y, side)."""
    f = np.zeros((*FRAME, 3), np.uint8)
    for x, y, s in squares:
        f[y:y + s, x:x + s] = 255
    return f


def pipeline(detector, **kw):
    probs = lambda crops: np.full((len(crops), len(EMOTIONS)), 1 / len(EMOTIONS), np.float32)
    return Pipeline(detector, probs, class_names=EMOTIONS, min_face=4, **kw)


def test_the_width_follows_faces_that_shrink_and_grow():
    pipe = pipeline(Squares(), rescan_every=10)
    sides = [400] * 5 + list(range(400, 40, -20)) + [40] * 10 + list(range(40, 400, 20)) + [400] * 12
    steps = []
    for s in sides:
        dets, step = pipe.detect_frame(frame((100, 100, s)))
        assert len(dets) == 1  # found on every frame, whatever the width
        steps.append(step)
    working = [st.working for st in steps]
    # Big face: the floor (400 px at 160 wide is 50 px >= 1.25 x 16); 40 px needs 1280*20/40 = 640.
    assert working[1:5] == [W.FLOOR] * 4
    small = working[sides.index(40) + 1:sides.index(40) + 10]  # the first 40 px frame runs at 448 (60 px)
    assert set(small) <= {640, None} and max(w for w in working if w) == 640
    assert working[-1] == W.FLOOR  # narrowed again at a rescan once the face is big
    assert all(w <= 640 for st in steps for w in st.widths if not st.full_scan)


def test_a_new_small_face_is_found_by_the_next_periodic_rescan():
    pipe = pipeline(Squares(), rescan_every=10)
    big, small = (100, 100, 400), (900, 500, 40)
    found = [len(pipe.detect_frame(frame(big) if i < 3 else frame(big, small))[0]) for i in range(14)]
    # Frames 1-9 run at 160 wide, where the 40 px face is 5 px: missed until the rescan of frame 10.
    assert found[:10] == [1] * 10 and found[10:] == [2] * 4
    assert pipe.widths.width == 640  # the rescan widened the working width for the small face


def test_a_missed_frame_is_retried_at_full_width_on_the_same_frame():
    det = Squares()
    pipe = pipeline(det, rescan_every=100)
    pipe.detect_frame(frame((100, 100, 400), (900, 400, 100)))  # full scan: width 1280*20/100 -> 256
    dets, step = pipe.detect_frame(frame((100, 100, 400), (900, 400, 100)))
    assert step.widths == (256,) and len(dets) == 2
    det.seen.clear()
    dets, step = pipe.detect_frame(frame((100, 100, 400), (900, 400, 50)))  # 10 px at 256: missed
    assert len(dets) == 2 and step.retried and step.widths == (256, 1280) and det.seen == [256, 1280]
    assert pipe.widths.width == 512
    # A face that left costs one retry: the full scan lowers the expected count.
    steps = [pipe.detect_frame(frame((100, 100, 400)))[1] for _ in range(3)]
    assert [s.retried for s in steps] == [True, False, False]


def test_a_fixed_width_keeps_todays_behaviour():
    det = Squares(detect_width=320)
    pipe = pipeline(det, rescan_every=2)
    assert pipe.widths is None
    f = frame((100, 100, 400), (900, 500, 40))
    for _ in range(4):
        dets, step = pipe.detect_frame(f)
        assert step == W.WidthStep((320,)) and len(dets) == 1  # the 40 px face is 10 px: never found
    assert set(det.seen) == {320} and [d.box for d in det(f)] == [d.box for d in dets]


def test_auto_outside_a_stream_runs_at_the_default_width():
    det = Squares()
    det(frame((100, 100, 400)))
    assert det.seen == [W.DEFAULT_WIDTH]
    assert pipeline(det).detect_frame(frame((100, 100, 400)), detect_width=1000)[1].widths == (1000,)


def test_full_width_is_capped_by_max_side():
    pipe = pipeline(Squares(), max_side=640)
    _, step = pipe.detect_frame(frame((100, 100, 400)))
    assert step.widths == (640,) and step.full_scan


def test_width_rules():
    face = lambda s: [Detection((0, 0, s, s), 1.0)]
    assert W.width_for_faces([], 1280, 1280, 16) is None
    assert W.width_for_faces(face(400), 1280, 1280, 16) == W.FLOOR
    assert W.width_for_faces(face(90), 1280, 1280, 16) == 288  # 1280 * 20 / 90 = 284.4 -> 288
    assert W.width_for_faces(face(24), 1280, 1280, 16) == 1280  # 1088 > 0.8 x 1280: full width
    assert W.capped_width((78000, 320), 2048) == 8 and W.capped_width((720, 1280), None) == 1280
    assert W.parse_detect_width("960") == 960 and W.parse_detect_width("auto") == "auto"
    for bad in ("wide", 0, -5, True, 1.5):
        with pytest.raises(ValueError, match=r"detect_width=.*expected 'auto', an integer > 0"):
            W.parse_detect_width(bad)
    with pytest.raises(ValueError, match="rescan_every=0"):
        W.AdaptiveWidth(16.0, rescan_every=0)


def test_run_reports_widths_and_track_ids(tmp_path):
    path = str(tmp_path / "shrink.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 25.0, FRAME[::-1])
    for i in range(20):
        writer.write(frame((100, 100, 400 - 15 * i)))
    writer.release()
    pipe = pipeline(Squares(), rescan_every=8, tracker=IoUTracker())
    for _ in range(2):  # a second run is a new stream: same figures
        s = pipe.run(path, display="no", draw=False, jsonl_out=str(tmp_path / "f.jsonl"))
        assert s["frames"] == 20 and s["detection_rate"] == 1.0 and s["detect_width"] == "auto"
        assert s["track_ids"] == 1 and s["median_faces_in_frame"] == 1.0
        assert s["full_scans"] >= 3 and W.FLOOR <= s["working_width_mean"] < 1280
    first = (tmp_path / "f.jsonl").read_text().splitlines()[0]
    assert '"detect_widths": [1280]' in first


def test_detect_width_config_and_registry_checks():
    from ferjax.experiments import realtime

    cfg = realtime.get_config(None)
    assert all(cfg.detector_args[d].detect_width == "auto" for d in ("haar", "yunet", "mtcnn"))
    assert FIELD_RULES["rescan_every"](cfg.rescan_every) and not FIELD_RULES["rescan_every"](0)
    for bad in ("wide", 0):
        with pytest.raises(RegistryError, match=r"detect_width=.*detector 'haar' expects 'auto'"):
            build_detector("haar", {"detect_width": bad})
    assert build_detector("haar", {"detect_width": "960"}).detect_width == 960  # from the command line
    assert isinstance(cfg.detector_args, ml_collections.ConfigDict)


def test_yunet_auto_finds_a_small_real_face_that_320_misses():
    """A real face (from a shared video frame) pasted at ~36 px into a 1920x1080 frame."""
    require_detector("yunet")
    video = MEDIA / "one_face_pexels_640x360.mp4"
    if not video.is_file():
        pytest.skip(f"real video {video} not present (../shared/media)")
    ok, src = cv2.VideoCapture(str(video)).read()
    assert ok
    yunet = build_detector("yunet", {"models_dir": str(MODELS), "use_cuda": False})
    (face,) = yunet.detect_at(src, None)
    x1, y1, x2, y2 = (int(v) for v in face.box)
    side = min(x2 - x1, y2 - y1)
    patch = src[max(0, y1 - side // 2):y2 + side // 2, max(0, x1 - side // 2):x2 + side // 2]
    k = 36 / side
    small = cv2.resize(patch, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
    big = np.full((1080, 1920, 3), 90, np.uint8)
    big[600:600 + small.shape[0], 1300:1300 + small.shape[1]] = small
    assert yunet.detect_at(big, 320) == []  # 6 px at the old fixed width
    pipe = pipeline(yunet, rescan_every=30)
    steps = []
    for _ in range(4):
        dets, step = pipe.detect_frame(big)
        assert len(dets) == 1 and 1300 <= dets[0].box[0] <= 1300 + small.shape[1]
        steps.append(step)
    assert steps[0] == W.WidthStep((1920,), full_scan=True)
    assert all(s.widths == steps[1].widths and s.working < 1920 for s in steps[1:])
    # The whole frame scaled to 640 wide: a 212 px face at the floor width.
    pipe.reset()
    pipe.detect_frame(src)
    assert pipe.detect_frame(src)[1].widths == (W.FLOOR,)


def test_a_face_missed_for_a_few_frames_keeps_its_id():
    t = IoUTracker(alpha=1.0)
    p = np.eye(7)[[3]]
    box = lambda x: np.array([[x, 100, x + 50, 150]], float)
    ids = [t.update(box(100 + 6 * i), p)[0] for i in range(5)]  # moving 6 px a frame
    for _ in range(8):  # missed for 8 frames (occluded, or below the detector's size)
        t.update(np.zeros((0, 4)), np.zeros((0, 7)))
    after = t.update(box(100 + 6 * 13), p)[0]  # 48 px further: no overlap with the last box
    assert ids == [[0]] * 5 and after == [0] and t.created == 1
    other = t.update(np.vstack([box(100 + 6 * 14), box(600)]), np.vstack([p, p]))[0]
    assert other == [0, 1]  # a face elsewhere still starts its own track


def test_bench_table_shows_widths_and_track_ids():
    from ferjax.realtime.bench import TIMED, format_table

    base = {"detector": "yunet", "backend": "b", "classifier": "c", "video": "v.mp4", "frames": 10, "fps": 9.0,
            "detection_rate": 1.0, "max_faces_in_frame": 10, **{f"{k}_ms": 1.0 for k in TIMED}}
    table = format_table([{**base, "detect_width": "auto", "working_width_mean": 351.6, "full_scans": 4,
                           "retries": 1, "median_faces_in_frame": 8.0, "track_ids": 24},
                          {**base, "detect_width": 320, "median_faces_in_frame": 3.5, "track_ids": None}])
    assert "| auto: 352 px, 4 full (1 retries) | 10 / 8 faces, 24 track ids |" in table
    assert "| 320 | 10 / 3.5 faces |" in table
