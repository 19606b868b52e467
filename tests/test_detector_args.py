"""Detector arguments from the Python API and the command line get the registry's bound checks."""
import pytest

from ferjax.analyzer import build_detector
from ferjax.registry import RegistryError
from conftest import require_detector


@pytest.mark.parametrize("args, reason", [
    ({"threshold": 5}, r"threshold=5: detector 'yunet' expects a number in \[0"),
    ({"threshold": "abc"}, r"threshold='abc': detector 'yunet' expects"),
    ({"nms_threshold": -0.1}, r"nms_threshold=-0.1: detector 'yunet' expects"),
])
def test_out_of_bounds_detector_arguments_are_refused_before_building(args, reason):
    with pytest.raises(RegistryError, match=reason):
        build_detector("yunet", args)


def test_haar_bounds_hold_too():
    with pytest.raises(RegistryError, match=r"scale_factor=1.0: detector 'haar' expects a number > 1.0"):
        build_detector("haar", {"scale_factor": 1.0})


def test_arguments_within_bounds_build():
    require_detector("yunet")
    det = build_detector("yunet", {"threshold": 0.8})
    assert det.name == "yunet"
