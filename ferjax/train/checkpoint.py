"""Orbax checkpoints: `latest` (for exact resume) and `best` (by a chosen metric), both atomic.

Orbax writes each checkpoint into a temporary folder and renames it when complete, so an
interrupted save never leaves a half-written checkpoint behind.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: str | Path, select_metric: str, mode: str = "max", keep: int = 2):
        directory = Path(directory).absolute()
        self.select_metric = select_metric
        self.latest = ocp.CheckpointManager(
            directory / "latest",
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False))
        self.best = ocp.CheckpointManager(
            directory / "best",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=lambda m: m[select_metric], best_mode=mode,
                enable_async_checkpointing=False))

    def save_latest(self, step: int, state: Any, host_state: dict) -> None:
        if step in self.latest.all_steps():
            return
        self.latest.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), host=ocp.args.JsonSave(host_state)))

    def save_best(self, step: int, state: Any, metrics: dict) -> None:
        if step in self.best.all_steps():
            return
        self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                       metrics={self.select_metric: float(metrics[self.select_metric])})

    def latest_host(self) -> dict | None:
        """The host-side record (config, history, ...) of the latest checkpoint, without its state."""
        step = self.latest.latest_step()
        if step is None:
            return None
        return dict(self.latest.restore(step, args=ocp.args.Composite(host=ocp.args.JsonRestore())).host)

    def restore_latest(self, template: Any) -> tuple[Any, dict] | None:
        """(state, host) of the latest checkpoint, or None; a ValueError naming the folder when its
        state does not have `template`'s structure (another model, or an option that adds state)."""
        step = self.latest.latest_step()
        if step is None:
            return None
        try:
            out = self.latest.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_abstract(template)), host=ocp.args.JsonRestore()))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{self.latest.directory / str(step)} holds a train state that does not fit "
                             f"the one this run builds ({type(e).__name__}: {str(e)[:300]})") from e
        return out.state, dict(out.host)

    def restore_best(self, template: Any) -> Any | None:
        step = self.best.best_step()
        if step is None:
            return None
        out = self.best.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(template))))
        return out.state

    def close(self) -> None:
        self.latest.close()
        self.best.close()


class _NoStepMetadataWarning(logging.Filter):
    """Drops Orbax's "Metadata file does not exist" warning: the step's metadata file sits one
    folder above the item folder that `read_state_as_numpy` reads, by design."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Metadata file does not exist" not in record.getMessage()


@contextlib.contextmanager
def _quiet_item_read():
    logger, quiet = logging.getLogger("absl"), _NoStepMetadataWarning()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def read_state_as_numpy(path: str | Path) -> dict:
    """A saved train state (a checkpoint step's `state` folder) as a tree of numpy arrays, whatever
    devices wrote it."""
    reader = ocp.PyTreeCheckpointer()
    with _quiet_item_read():
        meta = reader.metadata(path)
        meta = getattr(getattr(meta, "item_metadata", meta), "tree", getattr(meta, "item_metadata", meta))
        as_numpy = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), meta,
                                is_leaf=lambda m: hasattr(m, "shape"))
        return reader.restore(path, restore_args=as_numpy)


def saved_steps(folder: str | Path) -> list[int]:
    """The steps saved in a checkpoint folder (`checkpoints/latest` or `checkpoints/best`), in
    order; empty when the folder does not exist."""
    folder = Path(folder)
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def best_variables(workdir: str | Path) -> dict:
    """The model variables ({"params", "batch_stats", ...}) of a finished run's best checkpoint,
    as numpy arrays (the run may have used more devices); the weight average when it kept one."""
    best = Path(workdir).absolute() / "checkpoints" / "best"
    steps = saved_steps(best)
    if not steps:
        raise FileNotFoundError(f"{best} holds no checkpoint: is {workdir} a finished training run?")
    state = read_state_as_numpy(best / str(steps[-1]) / "state")
    if state.get("ema"):
        return dict(state["ema"])
    return {k: state[k] for k in ("params", "batch_stats") if state.get(k)}


def _abstract(tree: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
