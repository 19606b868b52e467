"""The paper's live desktop window: `--experiment=realtime --config.display=yes` under Xvfb with
OpenCV's GUI build, checked with a screenshot of the virtual screen. The project installs the
headless OpenCV, so this needs a Python whose OpenCV has a GUI: the current one when it has, or
$FERJAX_GUI_PYTHON (README, "Live desktop window"); it skips, saying which is missing, otherwise."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from conftest import MEDIA, REPO

VIDEO = MEDIA / "one_face_pexels_640x360.mp4"


def _has_gui(python: str) -> bool:
    code = "import cv2,sys; g=[l for l in cv2.getBuildInformation().splitlines() if 'GUI:' in l]; " \
           "sys.exit(0 if g and 'NONE' not in g[0].upper() else 1)"
    return subprocess.run([python, "-c", code], capture_output=True, timeout=60).returncode == 0


@pytest.fixture(scope="module")
def gui_python() -> str:
    for python in (sys.executable, os.environ.get("FERJAX_GUI_PYTHON")):
        if python and _has_gui(python):
            return python
    pytest.skip("this OpenCV is the headless build (no GUI); set FERJAX_GUI_PYTHON to a Python whose "
                "OpenCV is opencv-python (README: Live desktop window)")


def _grab(display: str) -> np.ndarray:
    from PIL import ImageGrab

    return cv2.cvtColor(np.asarray(ImageGrab.grab(xdisplay=display)), cv2.COLOR_RGB2BGR)


def test_realtime_window_shows_annotated_video_under_xvfb(gui_python, tmp_path):
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb not installed (apt-get install xvfb)")
    if not VIDEO.is_file():
        pytest.skip(f"real video {VIDEO} not present")
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", "1", "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    app = None
    try:
        display = ":" + xvfb.stdout.readline().strip()
        env = {**os.environ, "DISPLAY": display, "JAX_PLATFORMS": "cpu", "QT_QPA_PLATFORM": "xcb"}
        app = subprocess.Popen([gui_python, "-m", "ferjax.run", "--experiment=realtime", f"--config.source={VIDEO}",
                                "--config.display=yes", "--config.max_frames=0", f"--workdir={tmp_path / 'rt'}"],
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        shot, deadline = None, time.monotonic() + 120
        while time.monotonic() < deadline and app.poll() is None:
            screen = _grab(display)
            if (screen.max(axis=2) > 30).sum() > 640 * 300:  # the window and its video are up
                time.sleep(2)  # a few frames later: boxes and labels drawn
                shot = _grab(display)
                break
            time.sleep(0.5)
        assert shot is not None, f"no window appeared; ferjax.run said: {app.stderr.read()[-2000:] if app.poll() is not None else ''}"
        cv2.imwrite(str(tmp_path / "window.png"), shot)
        # The annotated frame is in the window: its boxes use the label colours of the pipeline.
        from ferjax.realtime.faces import COLOURS

        drawn = sum(int((np.abs(shot.astype(int) - np.array(c)).sum(axis=2) < 20).sum()) for c in COLOURS.values())
        assert drawn > 200, "no box or label colour found in the window"
    finally:
        if app is not None and app.poll() is None:
            app.terminate()
            app.wait(timeout=20)
        if app is not None:
            assert "live window disabled" not in app.stderr.read()
        xvfb.terminate()
        xvfb.wait(timeout=10)
