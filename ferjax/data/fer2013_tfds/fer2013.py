"""`fer2013` TFDS builder: Training/PublicTest/PrivateTest -> train/validation/test.

Reads `fer2013.csv`, `fer2013.csv.gz` or an image-folder tree from the manual download folder,
joins FER+ votes from `fer2013new.csv` when it lies beside the CSV, and keeps each row index.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from ferjax.data import fer2013 as fer


@dataclasses.dataclass
class Fer2013Config(tfds.core.BuilderConfig):
    skip_bad_rows: bool = False


class Fer2013(tfds.core.GeneratorBasedBuilder):
    """FER2013 facial expressions (48x48 grey, 7 classes) with optional FER+ votes."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        Fer2013Config(name="strict", description="Malformed rows stop the build."),
        Fer2013Config(name="skip_bad_rows", description="Malformed rows are skipped and counted.",
                      skip_bad_rows=True),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = fer.missing_message("the manual download folder")

    def __init__(self, *, source: Path | None = None, **kwargs):
        """`source`: the exact CSV, gzipped CSV or image folder to read (default: the one
        `find_source` picks in the manual download folder)."""
        self._source = source
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(48, 48, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=fer.EMOTIONS),
                "row": tfds.features.Scalar(dtype=np.int64),
                "ferplus_votes": tfds.features.Tensor(shape=(10,), dtype=np.int16),
            }),
            supervised_keys=("image", "label"),
            homepage=fer.KAGGLE_URL,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        source = self._source or fer.find_source(dl_manager.manual_dir)
        self.read_report = fer.ReadReport(str(source))
        records = list(fer.iter_records(source, self.builder_config.skip_bad_rows, self.read_report))
        by_split = {s: [r for r in records if r.split == s] for s in fer.SPLITS}
        return {s: self._generate_examples(recs) for s, recs in by_split.items() if recs}

    def _generate_examples(self, records):
        for r in records:
            votes = r.ferplus_votes if r.ferplus_votes is not None else np.full(10, -1, np.int16)
            yield r.row, {"image": r.image, "label": r.label, "row": r.row, "ferplus_votes": votes}
