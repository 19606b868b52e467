"""FER2013 split arrays via the TFDS builder: prepare once (array_record), then load to memory."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from ferjax.data import fer2013 as fer

_log = logging.getLogger(__name__)
ENV_VAR = "FER2013_PATH"


def resolve_source(path: str | None) -> Path:
    """The FER2013 source: config path, else $FER2013_PATH, else TFDS's manual download folder."""
    for candidate in (path, os.environ.get(ENV_VAR)):
        if candidate:
            return fer.find_source(candidate)
    manual = Path(tfds.download.DownloadConfig().manual_dir or
                  Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()
                  / "downloads" / "manual")
    try:
        return fer.find_source(manual)
    except FileNotFoundError:
        raise FileNotFoundError(fer.missing_message(
            f"--config.data.fer2013_path, ${ENV_VAR} or {manual} (none given or found)")) from None


def builder_for(source: Path, data_dir: str | None = None, skip_bad_rows: bool = False):
    """A prepared `Fer2013` builder reading exactly `source`, in a data folder keyed by the
    content of every file it reads (`fer2013.content_hash`): any change to them rebuilds."""
    from ferjax.data.fer2013_tfds import Fer2013

    if source.is_file() and not (source.name.startswith("fer2013.csv")
                                 or source.name.endswith(fer.COMPACT_SUFFIX)):
        raise fer.FER2013FormatError(f"{source}: the CSV must be named fer2013.csv or fer2013.csv.gz "
                                     f"(a compact array file: NAME{fer.COMPACT_SUFFIX})")
    base = Path(data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()
    builder = Fer2013(source=source, data_dir=str(base / f"src-{fer.content_hash(source)}"),
                      config="skip_bad_rows" if skip_bad_rows else "strict")
    manual = source if source.is_dir() else source.parent
    if not builder.is_prepared():
        _log.info("preparing FER2013 from %s into %s (once)", source, builder.data_dir)
        builder.download_and_prepare(
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
        report = getattr(builder, "read_report", None)
        if report is not None and report.bad_rows:
            _log.warning("%s", report.summary())
            print(report.summary(), flush=True)
    return builder


def load_splits(path: str | None = None, data_dir: str | None = None,
                skip_bad_rows: bool = False, splits=fer.SPLITS) -> dict[str, dict[str, np.ndarray]]:
    """{split: {image [N,48,48,1] uint8, label [N] int32, row [N] int64, ferplus_votes [N,10]}}.

    Records come through TFDS data sources (array_record), sorted by source row.
    """
    builder = builder_for(resolve_source(path), data_dir, skip_bad_rows)
    out = {}
    for split in splits:
        if split not in builder.info.splits:
            continue
        src = builder.as_data_source(split=split)
        items = src.__getitems__(list(range(len(src))))
        order = np.argsort([it["row"] for it in items])
        out[split] = {
            "image": np.stack([items[i]["image"] for i in order]).astype(np.uint8),
            "label": np.asarray([items[i]["label"] for i in order], np.int32),
            "row": np.asarray([items[i]["row"] for i in order], np.int64),
            "ferplus_votes": np.stack([items[i]["ferplus_votes"] for i in order]).astype(np.int16),
        }
    return out
