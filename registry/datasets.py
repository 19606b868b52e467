"""Datasets: FER2013 splits under an evaluation protocol (GUIDE.md §4)."""
from __future__ import annotations

import ml_collections
import numpy as np

from ferjax.data.ferplus import ferplus_majority
from ferjax.data.loading import load_splits
from ferjax.registry import DATASETS, one_of

@DATASETS.register("fer2013", checks={"protocol": one_of("original", "ferplus")})
def fer2013(cfg: ml_collections.ConfigDict, protocol: str = "original") -> dict:
    """FER2013 train/validation/test; protocol `original` (Kaggle labels) or `ferplus` (FER+ majority)."""
    splits = load_splits(cfg.fer2013_path or None, cfg.tfds_data_dir or None, cfg.skip_bad_rows)
    if protocol == "ferplus":
        for name, arr in splits.items():
            label = ferplus_majority(arr["ferplus_votes"])
            keep = label >= 0
            if not keep.any():
                raise ValueError(f"protocol 'ferplus' needs fer2013new.csv beside the FER2013 CSV; "
                                 f"split {name!r} has no usable FER+ votes")
            splits[name] = {k: v[keep] for k, v in arr.items()}
            splits[name]["label"] = label[keep].astype(np.int32)
    elif protocol != "original":
        raise ValueError(f"unknown protocol {protocol!r}; expected 'original' or 'ferplus'")
    limit = cfg.limit_per_split
    if limit:
        splits = {k: {f: v[:limit] for f, v in arr.items()} for k, arr in splits.items()}
    return splits


@DATASETS.register("derived")
def derived(cfg: ml_collections.ConfigDict, protocol: str = "original") -> dict:
    """A base dataset plus removed, relabeled and added Training examples (folder `data.derived_dir`).

    See ferjax.data.derived; validation and test are the base's arrays, untouched."""
    from ferjax.data.derived import load  # noqa: PLC0415

    return load(cfg, protocol)
