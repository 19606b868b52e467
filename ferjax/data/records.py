"""What every FER2013 reader yields and shares: the class names and splits, one `Record` per
image, the `ReadReport` of skipped rows, and the format error. Imports nothing of ferjax."""
from __future__ import annotations

import dataclasses
import difflib

import numpy as np

EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
SPLITS = ("train", "validation", "test")
COMPACT_SUFFIX = ".npz.xz"  # a compact array file (ferjax.data.compact); FER+ votes are inside
COMPACT_FILE = "fer2013" + COMPACT_SUFFIX  # its default name


def class_index(name: str) -> int:
    """Index of an expression class name in `EMOTIONS` (any case); unknown names raise with close matches."""
    key = str(name).strip().lower()
    if key not in EMOTIONS:
        close = difflib.get_close_matches(key, EMOTIONS, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown class {name!r}.{hint} Classes: {', '.join(EMOTIONS)}")
    return EMOTIONS.index(key)


class FER2013FormatError(ValueError):
    """A FER2013 source file does not have the expected format."""


@dataclasses.dataclass
class Record:
    row: int
    split: str
    label: int
    image: np.ndarray  # [48,48,1] uint8
    ferplus_votes: np.ndarray | None = None  # [10] int16, -1 where unknown


@dataclasses.dataclass
class ReadReport:
    source: str
    rows_read: int = 0
    bad_rows: list[tuple[int, str]] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        head = "; ".join(f"row {r}: {why}" for r, why in self.bad_rows[:5])
        more = f" (+{len(self.bad_rows) - 5} more)" if len(self.bad_rows) > 5 else ""
        return f"{self.source}: {self.rows_read} rows read, {len(self.bad_rows)} skipped" + (
            f" [{head}{more}]" if self.bad_rows else "")
