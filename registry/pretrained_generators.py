"""Pretrained generators: each name returns the folder of a generator export (`generator.json` +
`generator.msgpack`, ferjax.train.generator_export) that `balance_fer2013` and `reproduce_paper`
read through `--config.generator_checkpoint=NAME` (a folder path works there too).

Kept apart from the pretrained classifiers, which the Analyzer, `/v1/models` and model export loop
over. A shipped pair lives in `ferjax/pretrained/generators/NAME/` (`generator/`, the source ->
target G; `generator_reverse/`, F; `card.json`, its model card), written by
`python -m ferjax.train.generator_export --run=RUN --ship=NAME`."""
from pathlib import Path

from ferjax.registry import PRETRAINED_GENERATORS
from ferjax.train.generator_export import FORWARD, SHIPPED_DIR


def shipped(name: str) -> Path:
    """The forward generator folder of the pair shipped as `name` (its reverse lies beside it)."""
    return SHIPPED_DIR / name / FORWARD


@PRETRAINED_GENERATORS.register("cyclegan_neutral2disgust_cpu")
def cyclegan_neutral2disgust_cpu() -> Path:
    """`cyclegan_neutral2disgust:cpu`'s G: neutral -> disgust at 48 px, trained on FER2013 Training.

    Its reverse F lies beside it; model card: ferjax/pretrained/generators/cyclegan_neutral2disgust_cpu/card.json."""
    return shipped("cyclegan_neutral2disgust_cpu")
