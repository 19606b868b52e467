"""Evaluate a registered pretrained classifier under a protocol on the test split."""
from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_collections
import numpy as np

from ferjax import pretrained
from ferjax.config import invoked_command
from ferjax.data import paper_split
from ferjax.data.fer2013 import EMOTIONS
from ferjax.eval import logit_adjustment
from ferjax.eval.predict import TTA_MODES, evaluate_split
from ferjax.registry import DATASETS


def evaluate_pretrained(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Reports accuracy, balanced accuracy, macro-F1 and per-class recall of `config.model`."""
    if config.tta not in TTA_MODES:
        raise ValueError(f"--config.tta={config.tta!r}: expected one of {sorted(TTA_MODES)}")
    model, variables, card = pretrained.load(config.model or None)
    data = _protocol_data(config)
    split = config.split
    if split not in data:
        raise ValueError(f"split {split!r} not in dataset; available: {sorted(data)}")
    adjust = config.logit_adjustment  # values checked by config.FIELD_RULES
    if adjust == "select" and split == "validation":
        raise ValueError("--config.logit_adjustment=select chooses tau on the validation split; "
                         "evaluate another split (--config.split=test)")
    twins = config.training_twins  # values checked by config.FIELD_RULES
    export_to = config.export_to
    if export_to and (adjust != "select" or config.tta != "none" or split != "test" or not config.export_name
                      or twins != "keep"):
        raise ValueError("--config.export_to writes the logit-adjusted model: it needs "
                         "--config.logit_adjustment=select, --config.tta=none, --config.split=test, "
                         "--config.training_twins=keep and --config.export_name=NAME")
    apply = jax.jit(TTA_MODES[config.tta](lambda v, x: model.apply(v, x, train=False)))
    out_dir = Path(workdir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def logits(batch, shift=0.0):
        return np.asarray(apply(variables, batch["image"].astype("float32"))) + shift

    evaluated, twin_rows = data[split], None
    if twins != "keep":
        evaluated, twin_rows = _by_training_twins(data["train"]["image"], data[split], twins)
    choice, shift = None, 0.0
    if adjust == "select":  # tau chosen on the selection split (PublicTest), with the same TTA
        choice = logit_adjustment.select_on_validation(logits, data, config.batch_size, EMOTIONS)
        shift = choice["offset"]
    report = evaluate_split(lambda b: logits(b, shift), evaluated, config.batch_size, EMOTIONS,
                            config.protocol, split, out_dir, card.get("name", ""))
    report.update(model=card.get("name"), tta=config.tta)
    if twin_rows is not None:
        report.update(training_twins=twins, split_rows=len(data[split]["label"]),
                      rows_with_training_twin=twin_rows)
    if choice is not None:
        report["logit_adjustment"] = logit_adjustment.card_entry(choice)
    if export_to:
        _export_adjusted(model, variables, card, report, shift, data["validation"]["image"][:8], config)
        report["exported"] = str(export_to)
    (out_dir / "evaluation.json").write_text(json.dumps(report, indent=2))
    return report


def _protocol_data(config: ml_collections.ConfigDict) -> dict:
    """The splits the protocol scores: FER2013 (or `config.dataset`) for original and ferplus; for
    paper, the parts of a reproduce_paper run's row (train: its 80%, validation: the selection part
    of it, test: its 20%)."""
    if config.protocol != "paper":
        return DATASETS.create(config.dataset or "fer2013", cfg=config.data, protocol=config.protocol)
    if config.dataset:
        raise ValueError(f"--config.protocol=paper scores the split of --config.paper_run; leave "
                         f"--config.dataset empty (it is {config.dataset!r})")
    return paper_split.load(config.paper_run, config.paper_row)


def _by_training_twins(train_images: np.ndarray, split: dict, twins: str) -> tuple[dict, int]:
    """The rows of `split` without (`drop`) or with (`only`) an exact or near duplicate among the
    Training images (ferjax.curation.signals.training_twins), and how many rows have one."""
    from ferjax.curation.signals import training_twins

    has_twin = training_twins(train_images, split["image"])
    keep = ~has_twin if twins == "drop" else has_twin
    return {k: np.asarray(v)[keep] for k, v in split.items()}, int(has_twin.sum())


def _export_adjusted(model, variables, card: dict, report: dict, shift: np.ndarray, probe,
                     config: ml_collections.ConfigDict) -> None:
    """Writes the adjusted model (the evaluated offset `shift` folded into its output bias) with a
    card holding the source model's, the adjustment and the test figures just measured."""
    adjusted = logit_adjustment.fold_into_output_bias(model, variables, shift, probe)
    new_card = {**card, "name": config.export_name, "adjusted_from": card.get("name"),
                **{k: report[k] for k in ("n", "accuracy", "balanced_accuracy", "macro_f1", "per_class_recall")},
                "logit_adjustment": report["logit_adjustment"], "command": invoked_command(),
                "source_command": card.get("command"), "source_reproduce_command": card.get("reproduce_command"),
                "reproduce_command": f"python -m ferjax.run --experiment=evaluate --config.model={card.get('name')} "
                                     f"--config.logit_adjustment=select --config.export_to=FILE "
                                     f"--config.export_name={config.export_name}"}
    pretrained.export(adjusted, new_card, config.export_to)
