"""Curation signals: what `curate_fer2013` may remove from the Training split (see ferjax.curation.signals).

Each is `(splits, cache_dir) -> SignalResult`; thresholds are the factory's arguments, set per
signal in an experiment's `curation_signal_args`.
"""
from ferjax.curation.signals import (BlankSignal, DuplicatesSignal, NoFaceSignal, NonFrontalSignal,
                                     TextGraphicsSignal)
from ferjax.registry import CURATION_SIGNALS, Check, at_least, between, greater, one_of

_SIZE = Check(lambda v: isinstance(v, int) and v >= 48, "an integer >= 48 (pixels)")

CURATION_SIGNALS.register(
    "blank", doc="Blank or near-constant images (pixel std <= max_std).",
    checks={"max_std": at_least(0.0)})(BlankSignal)
CURATION_SIGNALS.register(
    "text_graphics", doc="Text and graphics: flat or saturated images.",
    checks={"min_mode_fraction": between(0.0, 1.0), "min_saturated_fraction": between(0.0, 1.0),
            "saturation_margin": between(0, 127)})(TextGraphicsSignal)
CURATION_SIGNALS.register(
    "no_face", doc="No upright face found by a registered detector on the upscaled image (or only turned 90 degrees).",
    checks={"size": _SIZE, "pad": between(0.0, 1.0), "min_score": between(0.0, 1.0),
            "sideways_margin": between(0.0, 1.0), "sideways_max_score": between(0.0, 1.0),
            "min_face_area": between(0.0, 1.0)})(NoFaceSignal)
CURATION_SIGNALS.register(
    "non_frontal", doc="Strongly non-frontal faces, from YuNet/MTCNN landmarks (yaw ratio).",
    checks={"size": _SIZE, "pad": between(0.0, 1.0), "max_yaw_ratio": greater(0.0),
            "min_score": between(0.0, 1.0)})(NonFrontalSignal)
CURATION_SIGNALS.register(
    "duplicates", doc="Exact and near duplicates, test-split leaks, conflicting labels.",
    checks={"max_distance": between(0, 64), "min_std": at_least(0.0),
            "conflicts": one_of("remove", "keep")})(DuplicatesSignal)
