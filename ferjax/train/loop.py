"""A generic epoch loop around a jitted train step: resume, evaluate, checkpoint, stop early.

The loop owns everything a long run needs and nothing model-specific: exact resume from the
latest checkpoint (the data order and RNG depend only on the step), reduce-on-plateau, early
stopping, the best checkpoint by a chosen metric, a progress bar with throughput and ETA, and
metrics to JSON lines and TensorBoard. SIGTERM/SIGINT save a checkpoint before exiting.
"""
from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from ferjax.config import changed_fields, recipe_defaults
from ferjax.data.pipeline import TrainBatches
from ferjax.train import sharding
from ferjax.train.checkpoint import Checkpointer
from ferjax.train.logging_utils import MetricWriter
from ferjax.train.schedules import EarlyStopping, ReduceOnPlateau

_log = logging.getLogger(__name__)


class Interrupted(RuntimeError):
    """The run was stopped by a signal after saving a checkpoint; rerun the command to resume."""


class NonFinite(RuntimeError):
    """A train step returned a non-finite loss or gradient norm; no checkpoint after it was saved."""


def first_non_finite(pending: list[tuple[int, dict]]) -> tuple[int, str] | None:
    """(step, metric) of the first non-finite `loss` or `grad_norm` among (step, metrics) pairs."""
    for step, metrics in pending:
        for key in ("loss", "grad_norm"):
            if key in metrics and not np.isfinite(float(metrics[key])):
                return step, key
    return None


def fit(state: Any, train_step: Callable, batches: TrainBatches, evaluate: Callable[[Any], dict],
        cfg: ml_collections.ConfigDict, workdir: str | Path, mesh,
        on_epoch_end: Callable[[Any, int], None] | None = None,
        run_config: dict | None = None) -> tuple[Any, dict]:
    """Trains until cfg.epochs (or early stopping / cfg.max_steps); returns (state, host_state).

    `train_step(state, batch) -> (state, metrics)` may return any scalar metrics (all are
    averaged, logged and shown); `evaluate(state)` returns validation metrics including
    `cfg.select_metric`; `on_epoch_end(state, epoch)` runs after each epoch (e.g. sample grids).
    A state with an `lr_scale` field gets reduce-on-plateau's scale. `run_config` (the flattened
    experiment config) is saved with the checkpoint: resuming under a different one is refused.
    """
    workdir = Path(workdir)
    mode = cfg.select_mode
    ckpt = Checkpointer(workdir / "checkpoints", cfg.select_metric, mode)
    plateau = ReduceOnPlateau(cfg.plateau.factor, cfg.plateau.patience, cfg.plateau.min_scale, mode)
    early = EarlyStopping(cfg.early_stop_patience, mode)
    host = {"history": [], "finished": False, "config": run_config}
    restored = _restore_latest(ckpt, state, run_config, workdir)
    if restored is not None:
        state, host = restored
        plateau = ReduceOnPlateau(**host["plateau"])
        early = EarlyStopping(**host["early"])
        print(f"resumed from step {int(state.step)} in {workdir / 'checkpoints'}", flush=True)
    state = jax.device_put(state, sharding.replicated(mesh))
    # Wall time over every session of this run up to its last checkpoint, interrupted ones included.
    session_start, earlier_seconds = time.perf_counter(), float(host.get("train_seconds", 0.0))

    spe = batches.steps_per_epoch
    total = cfg.epochs * spe
    stop_at = min(total, cfg.max_steps) if cfg.max_steps else total
    step = int(state.step)
    if host["finished"] or step >= stop_at:
        ckpt.close()
        return state, host

    stop_signal = {"sig": None}

    def on_signal(signum, _frame):
        stop_signal["sig"] = signum

    # Under jax.distributed, SIGTERM is JAX's preemption notice (its handler, not ours): every
    # process learns of it and all stop at the same step (Orbax's preemption sync point).
    multihost = jax.process_count() > 1
    handled = (signal.SIGINT,) if multihost else (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.signal(s, on_signal) for s in handled}
    writer = MetricWriter(workdir)
    bar = tqdm(total=stop_at, initial=step, unit="step", dynamic_ncols=True,
               mininterval=1.0 if sys.stderr.isatty() else 30.0, desc="train")
    sums, count, t_epoch = {}, 0, time.perf_counter()
    pending: list[tuple[int, dict]] = []  # steps not yet checked for finite loss and grad norm

    def check_finite():
        bad = first_non_finite(pending)
        pending.clear()
        if bad is not None:
            saved = ckpt.latest.latest_step()
            raise NonFinite(f"non-finite {bad[1]} at step {bad[0]}; stopped without saving it. Last "
                            f"good checkpoint: {f'step {saved}' if saved is not None else 'none'} in "
                            f"{workdir / 'checkpoints'} (lower the learning rate or set train.grad_clip)")

    def save_latest():
        check_finite()
        host.update(plateau=dataclasses.asdict(plateau), early=dataclasses.asdict(early),
                    train_seconds=earlier_seconds + time.perf_counter() - session_start)
        ckpt.save_latest(step, state, host)

    try:
        for batch in batches.iterate(step):
            state, metrics = train_step(state, sharding.put_batch(batch, mesh))
            step += 1
            count += 1
            pending.append((step, metrics))
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            if step % cfg.log_every_steps == 0 or step % spe == 0:
                check_finite()
                means = {f"train_{k}": float(v) / count for k, v in sums.items()}
                rate = count * batches.batch_size / (time.perf_counter() - t_epoch)
                first = sorted(means, key=lambda k: (k not in ("train_loss", "train_accuracy"), k))
                shown = {k[len("train_"):]: f"{means[k]:.3g}" for k in first[:5]}
                bar.set_postfix({**shown, "img_s": f"{rate:.0f}"})  # a dict keeps this order
                writer.write(step, {**means, "images_per_second": rate, "lr_scale": plateau.scale})
            bar.update(1)
            if step % spe == 0:
                epoch = step // spe
                train_means = {f"train_{k}": float(v) / count for k, v in sums.items()}
                val = {f"val_{k}": v for k, v in evaluate(state).items()
                       if isinstance(v, (int, float))}
                record = {"epoch": epoch, "step": step, **train_means, **val,
                          "epoch_seconds": time.perf_counter() - t_epoch, "lr_scale": plateau.scale}
                host["history"].append(record)
                writer.write(step, record)
                tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                    for k, v in record.items()))
                selected = val[f"val_{cfg.select_metric}"]
                ckpt.save_best(step, state, {cfg.select_metric: selected})
                scale = plateau.update(selected)
                if hasattr(state, "lr_scale"):
                    state = state.replace(lr_scale=jax.device_put(np.float32(scale), sharding.replicated(mesh)))
                if on_epoch_end is not None:
                    on_epoch_end(state, epoch)
                if early.update(selected):
                    tqdm.write(f"early stopping at epoch {epoch}: no improvement in "
                               f"{early.patience} epochs (best {cfg.select_metric}={early.best:.4f})")
                    host["finished"] = True
                sums, count, t_epoch = {}, 0, time.perf_counter()
                save_latest()
            elif step % cfg.checkpoint_every_steps == 0:
                save_latest()
            if multihost and stop_signal["sig"] is None and ckpt.latest.reached_preemption(step):
                stop_signal["sig"] = "SIGTERM (preemption notice, synchronised over processes)"
            if stop_signal["sig"] is not None:
                save_latest()
                raise Interrupted(f"stopped by signal {stop_signal['sig']} at step {step}; "
                                  f"checkpoint saved, rerun the same command to resume")
            if host["finished"] or step >= stop_at:
                break
        host["finished"] = host["finished"] or step >= total
        save_latest()
    finally:
        bar.close()
        writer.close()
        ckpt.close()
        for s, h in previous.items():
            signal.signal(s, h)
    return state, host


# Fields a resumed run may change: how long it runs, how often it logs and saves.
RESUMABLE_CHANGES = ("train.epochs", "train.max_steps", "train.log_every_steps",
                     "train.checkpoint_every_steps", "train.early_stop_patience", "data.fer2013_path",
                     "data.tfds_data_dir", "export_to", "export_name", "export_note", "reproduce_command",
                     "train.logit_adjustment")  # acts after training: a finished run re-exports


def refuse_changed_config(saved: dict | None, current: dict | None, workdir: Path) -> None:
    """Raises ValueError naming every field whose value differs from the checkpointed run's.

    An option only the checkpointed run names was removed from ferjax since (it cannot be set, so
    it does not count); one only this run names was added since, and counts unless it holds its
    recipe default (new options default to the earlier behaviour; without a known recipe, never).
    """
    if not saved or not current:
        return
    defaults = recipe_defaults(current.get("name"))
    if defaults is None:
        defaults = {k: current[k] for k in current if k not in saved}
    changed = [k for k in changed_fields(saved, current, RESUMABLE_CHANGES, defaults=defaults)
               if k in current]
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed[:8])
        raise ValueError(f"{workdir} holds a run with a different config ({detail}"
                         f"{', ...' if len(changed) > 8 else ''}); rerun with the same settings to resume, "
                         f"or choose a new --workdir")


def _restore_latest(ckpt: Checkpointer, state: Any, run_config: dict | None,
                    workdir: Path) -> tuple[Any, dict] | None:
    """The latest checkpoint's (state, host), after refusing a changed config (checked first: a
    changed option may also change the state's structure); None when there is none."""
    saved = ckpt.latest_host()
    if saved is None:
        return None
    refuse_changed_config(saved.get("config"), run_config, workdir)
    try:
        return ckpt.restore_latest(state)
    except ValueError as e:
        added = sorted(set(run_config or {}) - set(saved.get("config") or {}))
        hint = (f"; options this run sets that the checkpointed run's config does not name (an older "
                f"ferjax?): {', '.join(f'{k}={run_config[k]!r}' for k in added[:8])}" if added else "")
        raise ValueError(f"{e}{hint}; rerun with the same settings to resume, or choose a new "
                         f"--workdir") from e


def restore_best(state: Any, workdir: str | Path, select_metric: str, mode: str = "max") -> Any:
    """The best checkpoint's state (or `state` itself when there is none)."""
    ckpt = Checkpointer(Path(workdir) / "checkpoints", select_metric, mode)
    try:
        best = ckpt.restore_best(jax.device_get(state))
    finally:
        ckpt.close()
    return state if best is None else best
