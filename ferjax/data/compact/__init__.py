"""FER2013 as one compact array file (`*.npz.xz`): small enough to carry to a machine without network.

The file is an xz stream (a delta filter over 48-byte image rows, then LZMA2) holding an uncompressed
`.npz` with `image` uint8 [N,48,48], `label` uint8 [N] (0..6, EMOTIONS order), `split` uint8 [N]
(indices into `SPLITS`), `row` int64 [N] (the source row), optional `ferplus_votes` int16 [N,10],
and `meta` (a JSON string: format, version, source name). `xz -d` turns it into a plain `.npz`.

Reading it as a FER2013 source (`--config.data.fer2013_path=FILE.npz.xz`) gives the same records,
so the same split arrays, as the CSV it was exported from.

    python -m ferjax.data.compact export --out fer2013.npz.xz [--fer2013_path PATH] [--skip_bad_rows]
    python -m ferjax.data.compact info FILE.npz.xz        (the command: ferjax.data.compact.cli)
"""
from __future__ import annotations

import io
import json
import lzma
import zipfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ferjax.atomic import atomic_write_bytes
from ferjax.data import records as fer

SUFFIX = fer.COMPACT_SUFFIX
FORMAT, VERSION = "ferjax-fer2013-compact", 1
FILTERS = [{"id": lzma.FILTER_DELTA, "dist": 48}, {"id": lzma.FILTER_LZMA2, "preset": 9}]
REQUIRED = ("image", "label", "split", "row", "meta")


class CompactFormatError(fer.FER2013FormatError):
    """A compact FER2013 file is truncated, corrupt, or not in the expected format."""


def is_compact(path: str | Path) -> bool:
    """Whether `path` names a compact FER2013 file (by its `.npz.xz` suffix)."""
    return Path(path).name.endswith(SUFFIX)


def encode(records: Iterable[fer.Record], source_name: str = "") -> bytes:
    """The compact file's bytes for `records` (in their order)."""
    records = list(records)
    if not records:
        raise ValueError("no FER2013 records to write")
    arrays = {
        "image": np.stack([r.image.reshape(48, 48) for r in records]).astype(np.uint8),
        "label": np.asarray([r.label for r in records], np.uint8),
        "split": np.asarray([fer.SPLITS.index(r.split) for r in records], np.uint8),
        "row": np.asarray([r.row for r in records], np.int64),
        "meta": np.array(json.dumps({"format": FORMAT, "version": VERSION, "splits": list(fer.SPLITS),
                                     "emotions": list(fer.EMOTIONS), "source": source_name})),
    }
    if any(r.ferplus_votes is not None for r in records):
        arrays["ferplus_votes"] = np.stack([
            r.ferplus_votes if r.ferplus_votes is not None else np.full(10, -1, np.int16)
            for r in records]).astype(np.int16)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # stored, not deflated: xz compresses the whole stream better
    return lzma.compress(buf.getvalue(), format=lzma.FORMAT_XZ, filters=FILTERS)


def write(path: str | Path, records: Iterable[fer.Record], source_name: str = "") -> Path:
    """Writes `records` to a compact file at `path` (atomically: the old file or the whole new one)."""
    path = Path(path)
    if not is_compact(path):
        raise ValueError(f"{path}: a compact FER2013 file's name must end with {SUFFIX}")
    atomic_write_bytes(path, encode(records, source_name))
    return path


def read(path: str | Path) -> dict[str, np.ndarray]:
    """The checked arrays of a compact file (`ferplus_votes` only when the file has them)."""
    path = Path(path)
    bad = f"{path} is not a complete compact FER2013 file ({{why}}); export it again with " \
          f"`python -m ferjax.data.compact export --out {path.name}`"
    try:
        raw = lzma.decompress(path.read_bytes(), format=lzma.FORMAT_XZ)
    except (lzma.LZMAError, EOFError) as e:
        raise CompactFormatError(bad.format(why=f"xz stream truncated or corrupt: {e}")) from None
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise CompactFormatError(bad.format(why=f"the xz stream holds no readable .npz: {e}")) from None
    missing = [k for k in REQUIRED if k not in arrays]
    if missing:
        raise CompactFormatError(bad.format(why=f"arrays {missing} missing; it has {sorted(arrays)}"))
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except json.JSONDecodeError as e:
        raise CompactFormatError(bad.format(why=f"'meta' is not JSON: {e}")) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CompactFormatError(bad.format(why=f"'meta' lacks format={FORMAT!r}"))
    if meta.get("version") != VERSION:
        raise CompactFormatError(f"{path}: compact format version {meta.get('version')!r}; this "
                                 f"ferjax reads version {VERSION}. Export it again with this ferjax")
    _check(path, arrays, meta)
    return arrays


def _check(path: Path, a: dict[str, np.ndarray], meta: dict) -> None:
    n = len(a["image"])
    expect = {"image": (np.uint8, (n, 48, 48)), "label": (np.uint8, (n,)), "split": (np.uint8, (n,)),
              "row": (np.int64, (n,)), "ferplus_votes": (np.int16, (n, 10))}
    for key, (dtype, shape) in expect.items():
        if key in a and (a[key].dtype != dtype or a[key].shape != shape):
            raise CompactFormatError(f"{path}: array {key!r} is {a[key].dtype} {a[key].shape}; expected "
                                     f"{np.dtype(dtype)} {shape} (N={n} images)")
    if meta.get("splits") != list(fer.SPLITS) or meta.get("emotions") != list(fer.EMOTIONS):
        raise CompactFormatError(f"{path}: 'meta' names splits {meta.get('splits')} and classes "
                                 f"{meta.get('emotions')}; expected {list(fer.SPLITS)} and {list(fer.EMOTIONS)}")
    for key, top in (("label", len(fer.EMOTIONS)), ("split", len(fer.SPLITS))):
        wrong = np.flatnonzero(a[key] >= top)
        if wrong.size:
            raise CompactFormatError(f"{path}: {key} {a[key][wrong[0]]} at index {wrong[0]} is out of "
                                     f"range 0..{top - 1}")
    if n and (a["row"].min() < 0 or len(np.unique(a["row"])) != n):
        raise CompactFormatError(f"{path}: 'row' must hold distinct source rows >= 0")


def iter_records(path: str | Path, report: fer.ReadReport | None = None) -> Iterator[fer.Record]:
    """Records of a compact file, in file order (as `fer2013.iter_records` yields a CSV's)."""
    a = read(path)
    votes = a.get("ferplus_votes")
    for i in range(len(a["image"])):
        if report is not None:
            report.rows_read += 1
        yield fer.Record(int(a["row"][i]), fer.SPLITS[a["split"][i]], int(a["label"][i]),
                         a["image"][i].reshape(48, 48, 1), None if votes is None else votes[i])


def summary(path: str | Path) -> dict:
    """Rows per split, FER+ presence and size of a compact file (read and checked)."""
    a = read(path)
    return {"file": str(path), "bytes": Path(path).stat().st_size, "rows": len(a["image"]),
            **{s: int((a["split"] == i).sum()) for i, s in enumerate(fer.SPLITS)},
            "ferplus_votes": "ferplus_votes" in a}
