"""Train an expression classifier end to end: data -> jitted steps -> fit -> test report -> export."""
from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np

from ferjax import pretrained
from ferjax.data.ferplus import ferplus_distribution
from ferjax.config import invoked_command
from ferjax.data.fer2013 import EMOTIONS
from ferjax.data.pipeline import TrainBatches
from ferjax.eval import logit_adjustment
from ferjax.eval.plots import plot_curves
from ferjax.eval.predict import evaluate_split
from ferjax.registry import CLASSIFIERS, DATASETS, LOSSES
from ferjax.train import sharding
from ferjax.train.classifier_steps import create_state, make_steps
from ferjax.train.distill import ensemble_weights, teacher_names, teacher_probabilities
from ferjax.config import flat_config
from ferjax.train.loop import fit, restore_best
from ferjax.train.schedules import make_optimizer, make_schedule


def classifier_kwargs(config: ml_collections.ConfigDict) -> dict:
    """The classifier's keyword arguments, with `train.compute_dtype` as `dtype` when it is not
    float32 (a classifier that takes no `dtype` cannot honour it: refused before any work)."""
    kwargs = dict(config.classifier_kwargs)
    dtype = config.train.compute_dtype
    if dtype != "float32":
        accepted = CLASSIFIERS.accepted(config.classifier)
        if accepted is not None and "dtype" not in accepted:
            raise ValueError(f"train.compute_dtype={dtype!r}: classifier {config.classifier!r} takes no "
                             f"`dtype` argument; use float32 or add one to its factory")
        kwargs["dtype"] = dtype
    return kwargs


def initial_variables(model, name: str) -> dict:
    """The variables of registered pretrained model `name` to start training from (fine-tuning),
    checked leaf by leaf against `model`'s own shapes."""
    _, variables, _ = pretrained.load(name)
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 48, 48, 1), np.float32),
                                                 train=False))
    want = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(expected)}
    have = {jax.tree_util.keystr(k): np.shape(v) for k, v in jax.tree_util.tree_leaves_with_path(variables)}
    wrong = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
    if wrong:
        raise ValueError(f"train.init_from={name!r}: its weights do not fit the configured classifier "
                         f"({len(wrong)} leaves differ, first {wrong[0]}: model {want.get(wrong[0])}, "
                         f"weights {have.get(wrong[0])}); pick a model of the same classifier and width")
    return variables


def balanced_class_weights(labels, num_classes: int) -> tuple[float, ...]:
    """n / (K * n_c) per class (scikit-learn's "balanced"): every class weighs the same in total;
    a class absent from `labels` gets weight 0."""
    counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(np.float64)
    return tuple(float(len(labels) / (num_classes * c)) if c else 0.0 for c in counts)


def train_classifier(config: ml_collections.ConfigDict, workdir: str, data: dict | None = None) -> dict:
    """Trains `config.classifier` on `config.dataset` (or on `data`, splits made by the caller such
    as a cross-validation fold) and reports on the protocol's test split."""
    t0 = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    primary = sharding.is_primary()  # under jax.distributed only process 0 writes files
    if primary:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    tcfg = config.train
    if data is None:
        data = DATASETS.create(config.dataset, cfg=config.data, protocol=config.protocol)
    model = CLASSIFIERS.create_accepting(config.classifier, classifier_kwargs(config))
    loss_kwargs = dict(config.loss_kwargs)
    if config.train.class_weighting == "balanced":  # values checked by config.FIELD_RULES
        loss_kwargs["class_weights"] = balanced_class_weights(data["train"]["label"], len(EMOTIONS))
    teachers = teacher_names(config.distill) if "distill" in config else []
    vote_weight = config.vote_targets.weight if "vote_targets" in config else 0.0
    if teachers and vote_weight:
        raise ValueError("distill.teachers and vote_targets.weight are both set: a run trains towards "
                         "one kind of soft target; clear one of them")
    if vote_weight and "ferplus_votes" not in data["train"]:
        raise ValueError(f"vote_targets.weight={vote_weight}: dataset {config.dataset!r} has no FER+ votes "
                         f"(fer2013new.csv beside the FER2013 CSV; protocol 'ferplus')")
    if teachers or vote_weight:
        accepted = LOSSES.accepted(config.loss)
        if accepted is not None and "distill_weight" not in accepted:
            raise ValueError(f"soft targets (distill.teachers or vote_targets): loss {config.loss!r} "
                             f"takes no `distill_weight`; use cross_entropy")
        loss_kwargs["distill_weight"] = config.distill.weight if teachers else vote_weight
    loss_fn = LOSSES.create_accepting(config.loss, loss_kwargs)
    mesh = sharding.data_mesh(tcfg.num_devices or None)
    for key in ("batch_size", "eval_batch_size"):
        if tcfg[key] % mesh.size:
            raise ValueError(f"train.{key}={tcfg[key]} is not divisible by {mesh.size} devices")

    train_arrays = {"image": data["train"]["image"], "label": data["train"]["label"]}
    if teachers:
        train_arrays["teacher_probs"] = teacher_probabilities(
            config.distill, train_arrays["image"], tcfg.eval_batch_size, mesh, workdir if primary else None)
    elif vote_weight:  # the FER+ annotators as the teacher
        train_arrays["teacher_probs"] = ferplus_distribution(data["train"]["ferplus_votes"])
    batches = TrainBatches(train_arrays, tcfg.batch_size, tcfg.seed)  # global batches
    tx = make_optimizer(tcfg, make_schedule(tcfg, batches.steps_per_epoch))
    init_from, ema_decay = tcfg.init_from, tcfg.ema_decay
    adversarial = {k: tcfg[k] for k in ("adversarial_eps", "adversarial_steps", "adversarial_warmup_epochs")}
    state = create_state(model, tx, tcfg.seed, variables=initial_variables(model, init_from) if init_from else None,
                         ema=ema_decay > 0)
    train_step, eval_step = make_steps(model, tx, loss_fn, config.augment, tcfg.seed, mesh,
                                       sync_batch_norm=tcfg.sync_batch_norm, ema_decay=ema_decay,
                                       adversarial_eps=adversarial["adversarial_eps"],
                                       adversarial_steps=adversarial["adversarial_steps"],
                                       adversarial_ramp_steps=round(adversarial["adversarial_warmup_epochs"]
                                                                    * batches.steps_per_epoch))

    def logits_fn(current_state, shift=None):
        def apply(batch):
            logits = sharding.fetch(eval_step(current_state, sharding.put_batch(batch, mesh)))
            return logits if shift is None else logits + shift
        return apply

    eval_bs = tcfg.eval_batch_size
    val_split = data["validation"]

    def evaluate(current_state) -> dict:
        return evaluate_split(logits_fn(current_state), val_split, eval_bs, EMOTIONS,
                              config.protocol, "validation")

    state, host = fit(state, train_step, batches, evaluate, tcfg, workdir, mesh,
                      run_config=flat_config(config))
    train_seconds = time.perf_counter() - t0
    best = jax.device_put(restore_best(state, workdir, tcfg.select_metric), sharding.replicated(mesh))
    adjustment = None  # post-hoc logit adjustment, its tau chosen on the selection split
    if tcfg.logit_adjustment == "select":
        adjustment = logit_adjustment.select_on_validation(logits_fn(best), data, eval_bs, EMOTIONS)
    shift = adjustment["offset"] if adjustment else None
    title = f"{config.classifier}"
    reports = {name: evaluate_split(logits_fn(best, shift), data[name], eval_bs, EMOTIONS, config.protocol,
                                    name, workdir if primary else None, title)
               for name in ("validation", "test") if name in data}
    summary = {"experiment": config.name, "classifier": config.classifier,
               "protocol": config.protocol, "epochs_run": len(host["history"]),
               "wall_seconds": round(train_seconds, 1), "best_step": int(best.step),
               **{f"{k}_report": v for k, v in reports.items()},
               **({"logit_adjustment": logit_adjustment.card_entry(adjustment)} if adjustment else {})}
    if not primary:
        return summary
    plot_curves(host["history"], workdir / "curves.png", f"{title} ({config.protocol})")
    (workdir / "report.json").write_text(json.dumps(summary, indent=2))
    if config.export_to:
        test = reports.get("test", {})
        card = {"name": config.export_name or config.classifier, "classifier": config.classifier,
                # what loading needs to rebuild the network (registry/pretrained.py reads it)
                "classifier_kwargs": dict(config.classifier_kwargs),
                "classes": list(EMOTIONS), "data": "FER2013 (Kaggle CSV), Training split" + (
                    ", rows with a FER+ majority label" if config.protocol == "ferplus" else ""),
                "protocol": config.protocol, "selected_on": "validation (PublicTest)",
                "test_split": "test (PrivateTest)",
                **{k: test.get(k) for k in ("n", "accuracy", "balanced_accuracy", "macro_f1",
                                             "per_class_recall")},
                "epochs_run": len(host["history"]),
                # every session of the run, interrupted epochs included (older runs: epochs only)
                "train_seconds": round(host.get("train_seconds")
                                       or sum(h["epoch_seconds"] for h in host["history"]), 1),
                **({"distilled_from": dict(zip(teachers, ensemble_weights(config.distill).round(4).tolist())),
                    "distill_weight": config.distill.weight} if teachers else {}),
                **({"vote_targets_weight": vote_weight} if vote_weight else {}),
                **({"initialized_from": init_from} if init_from else {}),
                **({"ema_decay": ema_decay} if ema_decay else {}),
                **(adversarial if adversarial["adversarial_eps"] else {}),
                **({"logit_adjustment": summary["logit_adjustment"]} if adjustment else {}),
                "command": invoked_command(),
                "reproduce_command": config.reproduce_command,
                "note": config.export_note}
        variables = best.variables if shift is None else logit_adjustment.fold_into_output_bias(
            model, best.variables, shift, val_split["image"][:8])
        pretrained.export(variables, card, config.export_to)
        summary["exported"] = str(config.export_to)
    return summary
