"""The adaptive working width (`detect_width="auto"`, ferjax/realtime/width.py) and tracking ids."""
from __future__ import annotations

import json

import cv2
import ml_collections
import numpy as np
import pytest

from ferjax.analyzer import build_detector
from ferjax.components.classifiers import EMOTIONS
from ferjax.config import FIELD_RULES
from ferjax.realtime import width as W
from ferjax.realtime.detect import Detection, ResizingDetector, box_iou
from ferjax.realtime.pipeline import Pipeline
from ferjax.realtime.tracker import IoUTracker
from ferjax.realtime.windows import cut_by_edge, merge, square_window
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
    pipe = pipeline(Squares(), rescan_every=10, track_windows=False)  # the width alone (windows: below)
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


@pytest.mark.parametrize("windows", [False, True])
def test_a_new_small_face_is_found_by_the_next_periodic_rescan(windows):
    pipe = pipeline(Squares(), rescan_every=10, track_windows=windows)
    big, small = (100, 100, 400), (900, 500, 40)
    found = [len(pipe.detect_frame(frame(big) if i < 3 else frame(big, small))[0]) for i in range(14)]
    # Frames 1-9 run at 160 wide, where the 40 px face is 5 px: missed until the rescan of frame 10.
    assert found[:10] == [1] * 10 and found[10:] == [2] * 4
    # The rescan widened the working width for the small face, or (windows) gave it a window.
    assert pipe.widths.width == (W.FLOOR if windows else 640)


def test_a_missed_frame_is_retried_at_full_width_on_the_same_frame():
    det = Squares()
    pipe = pipeline(det, rescan_every=100, track_windows=False)
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
    # With windows of 96 px (2 x their pixels): a lone 40 px face is cheapest in a window beside a
    # 128-wide pass (9.2k + 18.4k px) than at its own 640 (230k); a big face keeps the pass at 160.
    assert W.width_with_windows(face(40), FRAME, 1280, 16, 96) == W.WINDOW_FLOOR == 128
    assert W.width_with_windows(face(400) + face(40), FRAME, 1280, 16, 96) == W.FLOOR
    assert W.width_with_windows(face(400) + face(40), FRAME, 1280, 16, 96, window_cost=40) == 640
    assert W.width_with_windows([], FRAME, 1280, 16, 96) is None and W.window_size(40) == 128
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
    # Haar: the fer package's settings (scaleFactor 1.1, minNeighbors 5, minSize 50, no equalisation),
    # in the config and as the detector's own defaults; its reliable size follows min_size.
    haar = build_detector("haar", {"use_cuda": False})
    fer = {"scale_factor": 1.1, "min_neighbors": 5, "min_size": 50, "equalize": False}
    assert {k: cfg.detector_args.haar[k] for k in fer} == fer == {k: getattr(haar, k) for k in fer}
    assert haar.reliable_face == 90 and build_detector("haar", {"min_size": 30}).reliable_face == 54
    with pytest.raises(RegistryError, match=r"equalize='yes': detector 'haar' expects True or False"):
        build_detector("haar", {"equalize": "yes"})
    assert build_detector("haar", {"equalize": True}).equalize


def test_yunet_auto_follows_a_small_real_face_that_320_misses():
    """A real face (from a shared video frame) pasted at ~36 px into a 1920x1080 frame, moving."""
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

    def scene(x, y):
        big = np.full((1080, 1920, 3), 90, np.uint8)
        big[y:y + small.shape[0], x:x + small.shape[1]] = small
        return big

    assert yunet.detect_at(scene(1300, 600), 320) == []  # 6 px at the old fixed width
    for windows in (False, True):
        pipe = pipeline(yunet, rescan_every=30, track_windows=windows)
        steps = []
        for i in range(6):  # the face moves 4 px right and 2 px down a frame
            dets, step = pipe.detect_frame(scene(1300 + 4 * i, 600 + 2 * i))
            assert len(dets) == 1 and 1300 + 4 * i <= dets[0].box[0] <= 1300 + 4 * i + small.shape[1]
            assert 600 + 2 * i <= dets[0].box[1] <= 600 + 2 * i + small.shape[0]
            steps.append(step)
        assert steps[0] == W.WidthStep((1920,), full_scan=True)
        if windows:  # followed in its window: the working pass at its narrowest never sees it
            assert steps[1:] == [W.WidthStep((W.WINDOW_FLOOR,), windows=1)] * 5
            assert yunet.detect_at(scene(1300, 600), W.WINDOW_FLOOR) == []
        else:  # the width alone: wide enough for a 36 px face
            assert all(s.widths == steps[1].widths and s.working < 1920 for s in steps[1:])
    # The whole frame scaled to 640 wide: a 212 px face at the floor width.
    pipe.reset()
    pipe.detect_frame(src)
    assert pipe.detect_frame(src)[1].widths == (W.FLOOR,)


SMALL = [(900, 500, 24), (1000, 150, 24), (200, 600, 28)]  # 3-4 px at the floor width


def test_small_tracked_faces_are_found_in_windows_between_rescans():
    det = Squares()
    pipe = pipeline(det, rescan_every=30)
    size = pipe.widths.windows.size
    assert size == W.window_size(W.WINDOW_HEADROOM * det.reliable_face) == 96
    dets, step = pipe.detect_frame(frame((100, 100, 400), *SMALL))  # the full scan finds all four
    assert step.full_scan and len(dets) == 4
    for i in range(1, 8):  # the small faces move 3 px a frame: their windows follow
        moved = [(x + 3 * i, y - 2 * i, s) for x, y, s in SMALL]
        det.seen.clear()
        dets, step = pipe.detect_frame(frame((100, 100, 400), *moved))
        assert step == W.WidthStep((W.FLOOR,), windows=3)  # no full pass, no retry
        assert det.seen == [W.FLOOR, size, size, size]  # the windows at their native pixels (96 px)
        boxes = sorted(tuple(round(v) for v in d.box) for d in dets)
        assert boxes[1:] == sorted((x, y, x + s, y + s) for x, y, s in moved)  # exact: full-resolution pixels
        assert np.abs(np.subtract(boxes[0], (100, 100, 500, 500))).max() <= 1280 / W.FLOOR  # one pixel at 160


def test_window_coordinates_map_back_exactly():
    det = Squares(min_side=8)
    f = frame((300, 200, 40), (520, 600, 60))
    # A 192-px window scaled to 96 (every coordinate even: INTER_AREA halves the square exactly).
    (d,) = det.detect_window(f, (260, 160, 452, 352), 96)
    assert d.box == (300.0, 200.0, 340.0, 240.0) and det.seen == [96]
    (d,) = det.detect_window(f, (500, 580, 596, 676), 96)  # 96 px: detected as it is
    assert d.box == (520.0, 600.0, 580.0, 660.0) and det.seen == [96, 96]
    lm = Detection((10.0, 20.0, 30.0, 40.0), 0.9, np.array([[12.0, 25.0]] * 5)).scaled(2.0).shifted(100, 7)
    assert lm.box == (120.0, 47.0, 160.0, 87.0) and lm.landmarks.tolist() == [[124.0, 57.0]] * 5
    # Windows are squares inside the frame; a face cut by a window edge inside the frame is dropped.
    assert square_window(np.array([10.0, 10, 30, 30]), 96, FRAME) == (0, 0, 96, 96)
    assert square_window(np.array([1270.0, 700, 1280, 720]), 96, FRAME) == (1184, 624, 1280, 720)
    assert square_window(np.array([600.0, 300, 700, 400]), 5000, FRAME) == (290, 0, 1010, 720)
    assert cut_by_edge((90, 40, 120, 60), (0, 0, 96, 96), FRAME, 1.0)
    assert not cut_by_edge((0, 0, 20, 20), (0, 0, 96, 96), FRAME, 1.0)  # the frame's own edge
    # Merging: a window's box wins over the working pass's box of the same face.
    win, coarse, other = (Detection((100, 100, 140, 140), 0.8), Detection((98, 99, 143, 141), 0.9),
                          Detection((400, 100, 440, 140), 0.7))
    assert merge([win], [coarse, other]) == [win, other]


@pytest.mark.parametrize("flicker", [False, True])
def test_window_misses_bring_the_next_full_scan_forward_once_windows_cost_as_much(flicker):
    many = [(60 + 100 * i, 600, 24) for i in range(10)]
    pipe = pipeline(Squares(), rescan_every=30)
    steps = []
    for i in range(13):  # flicker: one small face missing on each frame after the first
        shown = [m for k, m in enumerate(many) if not (flicker and i and k == i % 10)]
        steps.append(pipe.detect_frame(frame((100, 100, 400), *shown))[1])
    assert {s.windows for s in steps if not s.full_scan} == {10} and not any(s.retried for s in steps)
    # 10 windows of 2 x 96 x 96 px a frame: a 1280x720 frame's pixels after 5 frames. Windows that
    # keep finding their faces wait for the periodic scan (frame 30).
    assert [i for i, s in enumerate(steps) if s.full_scan] == ([0, 6, 12] if flicker else [0])


def test_a_big_face_lost_at_the_working_width_is_retried_but_a_window_miss_is_not():
    """Unless the window's face was the last one: a frame left without faces is retried."""
    det = Squares()
    pipe = pipeline(det, rescan_every=100)
    pipe.detect_frame(frame((100, 100, 400), (900, 500, 24)))
    assert len(pipe.detect_frame(frame((100, 100, 400), (900, 500, 24)))[0]) == 2
    dets, step = pipe.detect_frame(frame((100, 100, 400)))  # the small face is gone: its window misses
    assert len(dets) == 1 and not step.retried and step.windows == 1
    dets, step = pipe.detect_frame(frame((900, 500, 24)))  # the big face is gone: retried at full width
    assert step.retried and step.widths == (W.FLOOR, 1280) and len(dets) == 1
    pipe.detect_frame(frame((900, 500, 24)))
    dets, step = pipe.detect_frame(frame())  # no face left of those expected: retried too
    assert step.retried and step.windows == 1 and dets == []
    assert not pipe.detect_frame(frame())[1].retried  # once: the retry expects none


def test_run_reports_windows(tmp_path):
    path = str(tmp_path / "crowd.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 25.0, FRAME[::-1])
    for i in range(12):
        writer.write(frame((100, 100, 400), *[(x + 2 * i, y, s) for x, y, s in SMALL]))
    writer.release()
    pipe = pipeline(Squares(), rescan_every=100, tracker=IoUTracker())
    s = pipe.run(path, display="no", draw=False, jsonl_out=str(tmp_path / "f.jsonl"))
    assert s["frames"] == 12 and s["faces"] == 48 and s["full_scans"] == 1 and s["retries"] == 0
    assert s["windows"] == 33 and s["track_ids"] == 4 and s["working_width_mean"] == W.FLOOR
    rows = [json.loads(line) for line in (tmp_path / "f.jsonl").read_text().splitlines()]
    assert sum(r.get("windows", 0) for r in rows) == 33 and "windows" not in rows[0]


def test_haar_windows_scan_only_near_the_tracked_face_size():
    video = MEDIA / "one_face_pexels_640x360.mp4"
    if not video.is_file():
        pytest.skip(f"real video {video} not present (../shared/media)")
    ok, src = cv2.VideoCapture(str(video)).read()
    assert ok
    haar = build_detector("haar", {"use_cuda": False})
    (face,) = haar.detect_at(src, None)
    size = W.window_size(haar.window_face)
    window = square_window(np.array(face.box), W.CONTEXT * face.width, src.shape)
    (d,) = haar.detect_window(src, window, size, face.width)
    assert box_iou([d.box], [face.box])[0, 0] > 0.7
    assert haar.detect_window(src, window, size, face.width / 3) == []  # only 0.7-1.5x the hint


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
