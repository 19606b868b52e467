"""The `paper` protocol's data: a reproduce_paper run's modified set cut at random into training
and test parts, as the seed paper did (its §III-A: 80% / 20% of the cleaned, relabelled and
balanced set).

A run folder holds `paper_splits.json` ({row: split folder, relative to the run}). A split folder
holds `split.npz`, one entry per member of the row's modified set (`MEMBER_FIELDS`: a pool image or
a generated image, its label, its part), and `split.json`, the pool and generated-image files it
indexes (relative to the run). `load(run, row)` returns the parts as splits: `train` (the 80% less
its selection part), `validation` (the selection part, which picks checkpoints) and `test` (the 20%).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from ferjax.atomic import atomic_write_bytes, save_npz

INDEX, SPLIT_FILE, SPLIT_META = "paper_splits.json", "split.npz", "split.json"
PARTS = ("train", "validation", "test")  # part codes 0, 1, 2
ROWS = ("a", "b", "c", "d")  # the decomposition rows that have a split of their own
POOL, GENERATED = 0, 1  # member sources
# source (POOL or GENERATED), index (into the pool or the generated images), label (the row's),
# original_label (the FER2013 label of the image, or of the image a generated one was made from),
# relabeled (label set by the relabeling CNNs), part (code into PARTS), twin (an exact or near
# duplicate of the member sits in the row's 80%: test members only)
MEMBER_FIELDS = ("source", "index", "label", "original_label", "relabeled", "part", "twin")


class PaperSplitError(ValueError):
    """A run folder has no split for the row, or its files are missing or inconsistent."""


def random_parts(keys: np.ndarray, test_fraction: float, selection_fraction: float) -> np.ndarray:
    """Part code per member from its random key: the `test_fraction` of members with the smallest
    keys are test, the next `selection_fraction` of the rest selection, the others train. With iid
    uniform keys this is a seeded random split, and a member keeps its part in every row that holds it."""
    keys = np.asarray(keys, np.float64)
    order = np.argsort(keys, kind="stable")
    n_test = int(round(test_fraction * len(keys)))
    n_select = int(round(selection_fraction * (len(keys) - n_test)))
    part = np.zeros(len(keys), np.int8)
    part[order[:n_test]] = 2
    part[order[n_test:n_test + n_select]] = 1
    return part


def member_images(members: Mapping[str, np.ndarray], pool: Mapping[str, np.ndarray],
                  generated: Mapping[str, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    """(images, rows) of the members in their order: rows are FER2013 CSV rows, -1 - i for
    generated image i."""
    source, index = np.asarray(members["source"]), np.asarray(members["index"], np.int64)
    gen = source == GENERATED
    if gen.any() and (generated is None or index[gen].max() >= len(generated["image"])):
        raise PaperSplitError("the split names generated images that its generated-image file lacks")
    if (~gen).any() and index[~gen].max() >= len(pool["image"]):
        raise PaperSplitError("the split names pool images beyond its pool file")
    image = np.empty((len(index), *np.shape(pool["image"])[1:]), np.uint8)
    image[~gen] = np.asarray(pool["image"])[index[~gen]]
    if gen.any():
        image[gen] = np.asarray(generated["image"])[index[gen]]
    return image, np.where(gen, -1 - index, np.asarray(pool["row"])[np.where(gen, 0, index)])


def assemble(members: Mapping[str, np.ndarray], pool: Mapping[str, np.ndarray],
             generated: Mapping[str, np.ndarray] | None) -> dict[str, dict[str, np.ndarray]]:
    """The parts as splits: image, label, row (see `member_images`), generated, relabeled,
    original_label and twin per member."""
    image, row = member_images(members, pool, generated)
    gen = np.asarray(members["source"]) == GENERATED
    out = {}
    for code, name in enumerate(PARTS):
        m = np.asarray(members["part"]) == code
        out[name] = {"image": image[m], "label": np.asarray(members["label"])[m].astype(np.int32),
                     "row": row[m].astype(np.int64), "generated": gen[m],
                     "relabeled": np.asarray(members["relabeled"], bool)[m],
                     "original_label": np.asarray(members["original_label"])[m].astype(np.int32),
                     "twin": np.asarray(members["twin"], bool)[m]}
    return out


def write(folder: str | os.PathLike, members: Mapping[str, np.ndarray], pool_file: str,
          generated_file: str | None, info: Mapping | None = None) -> None:
    """`split.npz` and `split.json` into `folder` (a stage's temporary folder, renamed when done);
    the files are named relative to the run folder."""
    missing = [f for f in MEMBER_FIELDS if f not in members]
    if missing:
        raise PaperSplitError(f"split members lack {missing}")
    save_npz(Path(folder) / SPLIT_FILE, **{f: np.asarray(members[f]) for f in MEMBER_FIELDS})
    meta = {"pool": pool_file, "generated": generated_file, **dict(info or {})}
    atomic_write_bytes(Path(folder) / SPLIT_META, json.dumps(meta, indent=2).encode())


def register(run_dir: str | os.PathLike, row: str, folder: str | os.PathLike) -> None:
    """Records `folder` as the current split of `row` in the run's `paper_splits.json`."""
    run_dir = Path(run_dir)
    index = _index(run_dir) if (run_dir / INDEX).is_file() else {}
    index[row] = Path(folder).resolve().relative_to(run_dir.resolve()).as_posix()
    atomic_write_bytes(run_dir / INDEX, json.dumps(index, indent=2, sort_keys=True).encode())


def _index(run_dir: Path) -> dict:
    try:
        index = json.loads((run_dir / INDEX).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PaperSplitError(f"{run_dir / INDEX} cannot be read ({e}); rerun reproduce_paper in that "
                              f"folder to write it again") from None
    if not isinstance(index, dict):
        raise PaperSplitError(f"{run_dir / INDEX}: expected a JSON object {{row: split folder}}")
    return index


def load(run_dir: str | os.PathLike, row: str = "d") -> dict[str, dict[str, np.ndarray]]:
    """The `train`, `validation` and `test` parts of decomposition row `row` of a reproduce_paper
    run folder (see the module docstring)."""
    run_dir = Path(run_dir).expanduser()
    if not (run_dir / INDEX).is_file():
        raise PaperSplitError(f"{run_dir} holds no {INDEX}: set --config.paper_run to the folder of a "
                              f"reproduce_paper run (its --workdir, default runs/reproduce_paper/cpu) whose "
                              f"split stage has run")
    index = _index(run_dir)
    if row not in index:
        raise PaperSplitError(f"{run_dir / INDEX} has no split for row {row!r} (rows: "
                              f"{', '.join(sorted(index)) or 'none'}); expected one of {', '.join(ROWS)}")
    folder = run_dir / index[row]
    try:
        meta = json.loads((folder / SPLIT_META).read_text())
        with np.load(folder / SPLIT_FILE) as z:
            members = {f: z[f] for f in MEMBER_FIELDS}
        with np.load(run_dir / meta["pool"]) as z:
            pool = {"image": z["image"], "row": z["row"]}
        generated = None
        if meta.get("generated"):
            with np.load(run_dir / meta["generated"]) as z:
                generated = {"image": z["image"]}
    except (OSError, KeyError, ValueError) as e:
        raise PaperSplitError(f"the split of row {row!r} in {folder} is incomplete ({type(e).__name__}: {e}); "
                              f"rerun reproduce_paper in {run_dir} to make it again") from None
    return assemble(members, pool, generated)
