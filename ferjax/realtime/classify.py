"""The classifier behind the real-time loop: a registered pretrained model (the shipped one by
default) or, when asked, a registered classifier with random weights (speed runs and demos)."""
from __future__ import annotations

import logging
from typing import Sequence

from ferjax.inference import DEFAULT_BUCKETS, Predictor, load_predictor

_log = logging.getLogger(__name__)


def make_predictor(pretrained: str | None = None, classifier: str | None = None,
                   allow_random: bool = False, buckets: Sequence[int] = DEFAULT_BUCKETS,
                   seed: int = 0) -> tuple[Predictor, str]:
    """(predictor, description). Loads `pretrained` with `load_predictor`; when `classifier` is
    set, or the weights are missing and `allow_random`, builds that classifier (default
    `vgg_small`) with random weights, which is only meaningful for speed measurements."""
    from ferjax import pretrained as pt  # noqa: PLC0415
    from ferjax.registry import CLASSIFIERS  # noqa: PLC0415

    if not classifier:
        try:
            p = load_predictor(pretrained or None, buckets)
            return p, f"pretrained {p.name}"
        except FileNotFoundError as e:
            if not allow_random:
                raise
            _log.warning("%s; using random weights (allow_random_classifier=True): predictions are "
                         "meaningless, timings are valid", e)
    name = classifier or pt.PRETRAINED.get(pretrained or pt.DEFAULT)().classifier
    model = CLASSIFIERS.create(name)
    return Predictor(model, pt.init_variables(model, seed), buckets, name=name), f"{name} (random weights)"
