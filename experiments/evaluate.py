"""Evaluate a pretrained classifier: `--config.model=NAME --config.protocol=original|ferplus|paper`.

`--config.tta=flip` also averages each face with its mirror image (test-time augmentation);
`--config.logit_adjustment=select` subtracts tau * log(Training class frequency) from the logits,
with tau chosen on PublicTest (ferjax.eval.logit_adjustment); `--config.training_twins=drop`
scores only the test rows whose image has no exact or near duplicate in Training (`only`: just
those that have one), the leak-free view of FER2013's test splits.
`--config.protocol=paper --config.paper_run=RUN` scores the 20% test part of a reproduce_paper run
(`--config.paper_row`, default d: its curated, relabelled and balanced set), the paper's own
protocol: not comparable with the other two, for that test part shares the modified set's
distribution and near-duplicates with the 80% the paper trained on (docs/studies/reproduce_paper.md).
"""
import ml_collections

from ferjax.experiments.common import data_block

VARIANTS = ("original", "ferplus")  # the protocol (and `--config.protocol=paper`)


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "evaluate"
    c.task = "evaluate"
    c.model = ""  # a registered pretrained model; empty = the one shipped with ferjax
    c.dataset = ""  # "": the protocol's own (fer2013; the run's split for paper)
    c.protocol = variant or "original"
    c.split = "test"
    c.paper_run = ""  # protocol paper: the reproduce_paper run folder whose split is scored
    c.paper_row = "d"  # ... and which decomposition row's split (a, b, c or d)
    c.batch_size = 256
    c.tta = "none"  # "flip": average the logits of each face and its mirror image
    # "select": subtract tau * log(Training class frequency) from the logits, tau chosen on PublicTest
    c.logit_adjustment = "none"
    # "drop": only test rows without an exact/near duplicate in Training; "only": just those with one
    c.training_twins = "keep"
    c.export_to = ""  # with logit_adjustment=select: write the adjusted model (offset in its output bias)
    c.export_name = ""
    c.data = data_block(derived_dir=False)
    return c
