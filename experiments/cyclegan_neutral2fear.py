"""CycleGAN neutral -> fear on FER2013 Training (another class pair, same recipe and variants)."""
from ferjax.experiments.cyclegan_neutral2disgust import VARIANTS, cyclegan_config  # noqa: F401


def get_config(variant=None):
    return cyclegan_config("neutral", "fear", variant, "cyclegan_neutral2fear")
