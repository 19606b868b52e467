"""Reading FER2013 from its Kaggle CSV (plain or gzipped), the common image-folder layout, or a
compact array file (`*.npz.xz`, see ferjax.data.compact).

Every record keeps its source row index. Malformed input stops with a `FER2013FormatError` that
names the file, the row (and line) and the problem, unless `skip_bad_rows` is set: then bad rows
are counted and reported in `ReadReport`. A CSV is read one physical line per row (no FER2013 field
spans lines), each line decoded and parsed alone: a line that is not UTF-8, is longer than
`MAX_LINE_BYTES` or has an unterminated quote is one bad row, and the rows after it are read as
usual. FER+ votes (`fer2013new.csv` beside the CSV) are joined by row index; a FER+ row whose Usage
differs from the FER2013 row's is an error (the files are not aligned).

An image folder without a validation folder (`val`, `valid`, `validation`, `publictest`) gets
one carved from train: an image goes to validation when the SHA-256 of
`"{CARVE_SEED}:{class}/{file name}"` falls in the first `CARVE_FRACTION` of its range, so about
10% of each class moves, the same files on every machine, and adding images moves no other.
`content_hash` keys prepared copies by the bytes of every file the reader reads.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import os
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from ferjax.data.records import (  # noqa: F401  (re-exported: the names every reader shares)
    COMPACT_FILE, COMPACT_SUFFIX, EMOTIONS, SPLITS, FER2013FormatError, ReadReport, Record, class_index)

USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "validation", "PrivateTest": "test"}
FOLDER_SPLITS = {"train": "train", "training": "train", "val": "validation", "valid": "validation",
                 "validation": "validation", "publictest": "validation", "test": "test",
                 "privatetest": "test"}
FERPLUS_FILE = "fer2013new.csv"
FERPLUS_CLASSES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                   "contempt", "unknown", "NF")
# Rows whose FER+ votes belong to another image (see shared/data/fer2013/README.md).
FERPLUS_MISMATCHED_ROWS = (5274, 33200)
PIXELS = 48 * 48
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CARVE_SEED, CARVE_FRACTION = 0, 0.1  # validation carved from train in image folders without one
MAX_LINE_BYTES = 131_072  # a valid row is under 10,000 bytes; a longer line is a bad row, read in bounded chunks
READER_VERSION = 3  # part of content_hash: bump when the same files would give other records
KAGGLE_URL = "https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-recognition-challenge/data"


def find_source(path: str | os.PathLike) -> Path:
    """Resolves a user path (CSV file, gzipped CSV, compact `.npz.xz`, or a folder holding one of
    them / an image tree)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        for name in ("fer2013.csv", "fer2013.csv.gz", COMPACT_FILE):
            if (p / name).is_file():
                return p / name
        if any((p / d).is_dir() for d in FOLDER_SPLITS) or any(
                (c / d).is_dir() for c in p.iterdir() if c.is_dir() for d in FOLDER_SPLITS):
            return p
    raise FileNotFoundError(missing_message(str(p)))


def missing_message(where: str) -> str:
    return (f"FER2013 not found at {where}. Download fer2013.csv (or the image-folder version) from "
            f"Kaggle: {KAGGLE_URL} , then put fer2013.csv or fer2013.csv.gz there, or point ferjax at "
            f"it with --config.data.fer2013_path=PATH or the FER2013_PATH environment variable. "
            f"FER+ votes (optional): fer2013new.csv from https://github.com/microsoft/FERPlus beside it.")


def iter_records(source: Path, skip_bad_rows: bool = False,
                 report: ReadReport | None = None) -> Iterator[Record]:
    """Yields Records from a CSV, a gzipped CSV, a compact file, or an image folder tree."""
    report = report if report is not None else ReadReport(str(source))
    if source.is_dir():
        yield from _iter_folder(source, skip_bad_rows, report)
        return
    if source.name.endswith(COMPACT_SUFFIX):
        from ferjax.data import compact  # noqa: PLC0415  (it imports this module)

        yield from compact.iter_records(source, report)
        return
    ferplus_path = source.parent / FERPLUS_FILE
    ferplus = _read_ferplus(ferplus_path)
    for rec in _iter_csv(source, skip_bad_rows, report):
        if ferplus is not None and rec.row < len(ferplus[0]):
            votes, usages = ferplus
            if USAGE_TO_SPLIT[usages[rec.row]] != rec.split:
                raise FER2013FormatError(
                    f"{ferplus_path}, row {rec.row} (line {rec.row + 2}): Usage {usages[rec.row]!r} differs "
                    f"from {source.name}'s {_SPLIT_TO_USAGE[rec.split]!r} in the same row; FER+ rows are "
                    f"joined by position, so the two files are not aligned (use the fer2013new.csv made "
                    f"for this fer2013.csv)")
            rec.ferplus_votes = votes[rec.row]
        yield rec


_SPLIT_TO_USAGE = {split: usage for usage, split in USAGE_TO_SPLIT.items()}


def _open_binary(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _csv_lines(f: BinaryIO) -> Iterator[tuple[int, list[str] | None, str]]:
    """(line number from 1, fields or None, problem or "") for each physical line of `f`: each
    line is decoded (UTF-8; a BOM before the first is dropped) and parsed as CSV by itself, so a
    bad line never swallows the lines after it; a line over `MAX_LINE_BYTES` is skipped in bounded
    chunks without being held in memory."""
    line = 0
    while raw := f.readline(MAX_LINE_BYTES + 1):
        line += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):
                raw = f.readline(MAX_LINE_BYTES)
            yield line, None, f"line longer than {MAX_LINE_BYTES} bytes"
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield line, None, f"not UTF-8 text (byte {e.start} of the line is {raw[e.start:e.start + 1]!r})"
            continue
        if line == 1:
            text = text.removeprefix("\ufeff")
        try:
            rows = list(csv.reader([text], strict=True))
        except csv.Error as e:
            yield line, None, f"not one CSV record ({e}; an unterminated quote?)"
            continue
        if len(rows) > 1:  # a carriage return inside the line
            yield line, None, "more than one CSV record on one line (a stray carriage return?)"
            continue
        yield line, rows[0] if rows else [], ""


def _shown(fields: list[str] | None, problem: str) -> str:
    return problem if fields is None else repr(fields)[:200]


def _iter_csv(path: Path, skip_bad_rows: bool, report: ReadReport) -> Iterator[Record]:
    row = -1
    try:
        with _open_binary(path) as f:
            lines = _csv_lines(f)
            _, header, problem = next(lines, (1, None, "an empty file"))
            if header is None or [h.strip() for h in header[:3]] != ["emotion", "pixels", "Usage"]:
                raise FER2013FormatError(
                    f"{path}, line 1: expected the header 'emotion,pixels,Usage', got {_shown(header, problem)}")
            for line, fields, problem in lines:
                row = line - 2
                try:
                    if fields is None:
                        raise FER2013FormatError(problem)
                    rec = _parse_row(fields, row)
                except FER2013FormatError as e:
                    if not skip_bad_rows:
                        raise FER2013FormatError(
                            f"{path}, row {row} (line {line}): {e}. Fix the file or pass "
                            f"--config.data.skip_bad_rows=True to skip bad rows") from None
                    report.bad_rows.append((row, f"line {line}: {e}"))
                    continue
                report.rows_read += 1
                yield rec
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise FER2013FormatError(
            f"{path}: the gzip stream is truncated or corrupt after row {row} ({e}); "
            f"download the file again") from None


def _first_bad_pixel(values: list[str]) -> str:
    for v in values:
        try:
            if 0 <= int(v) <= 255:
                continue
        except ValueError:
            pass
        return v
    return values[0]


def _parse_row(fields: list[str], row: int) -> Record:
    if len(fields) != 3:
        raise FER2013FormatError(f"expected 3 fields (emotion,pixels,Usage), got {len(fields)}")
    emotion, pixels, usage = fields
    try:
        label = int(emotion)
    except ValueError:
        raise FER2013FormatError(f"emotion {emotion[:20]!r} is not an integer") from None
    if not 0 <= label < len(EMOTIONS):
        raise FER2013FormatError(f"emotion {label} is out of range 0..6")
    split = USAGE_TO_SPLIT.get(usage.strip())
    if split is None:
        raise FER2013FormatError(
            f"unknown Usage {usage[:40]!r}; expected one of {', '.join(USAGE_TO_SPLIT)}")
    values = pixels.split()
    if len(values) != PIXELS:
        raise FER2013FormatError(f"expected {PIXELS} pixel values, got {len(values)}")
    try:
        arr = np.array(values, dtype=np.int32)
    except (ValueError, OverflowError):
        bad = _first_bad_pixel(values)
        raise FER2013FormatError(f"pixel value {bad[:20]!r} is not an integer in 0..255") from None
    if arr.min() < 0 or arr.max() > 255:
        raise FER2013FormatError(f"pixel values must be 0..255, got {arr.min()}..{arr.max()}")
    return Record(row, split, label, arr.astype(np.uint8).reshape(48, 48, 1))


FERPLUS_HEADER = ("Usage", "Image name", *FERPLUS_CLASSES)
MAX_VOTES = 32_767  # what int16 holds; real files have at most 10 annotators per image


def read_ferplus(path: Path) -> np.ndarray | None:
    """FER+ votes [rows,10] int16 (-1 for rows whose votes belong to another image), or None."""
    table = _read_ferplus(path)
    return None if table is None else table[0]


def _read_ferplus(path: Path) -> tuple[np.ndarray, list[str]] | None:
    """(votes as `read_ferplus` gives them, the Usage of every row), or None without the file;
    any malformed line raises FER2013FormatError naming the file and row."""
    if not path.is_file():
        return None
    votes, usages = [], []
    with _open_binary(path) as f:
        lines = _csv_lines(f)
        _, header, problem = next(lines, (1, None, "an empty file"))
        if header is None or len(header) != 12 or header[0] != "Usage":
            raise FER2013FormatError(
                f"{path}, line 1: expected the FER+ header 'Usage,Image name,neutral,...,NF', "
                f"got {_shown(header, problem)}")
        for line, fields, problem in lines:
            row = line - 2
            try:
                if fields is None:
                    raise FER2013FormatError(problem)
                if len(fields) != 12:
                    raise FER2013FormatError(f"expected 12 fields ({','.join(FERPLUS_HEADER)}), got {len(fields)}")
                if fields[0] not in USAGE_TO_SPLIT:
                    raise FER2013FormatError(
                        f"unknown Usage {fields[0][:40]!r}; expected one of {', '.join(USAGE_TO_SPLIT)}")
                try:
                    counts = [int(v) for v in fields[2:12]]
                except ValueError:
                    raise FER2013FormatError("vote counts must be integers") from None
                if not all(0 <= c <= MAX_VOTES for c in counts):
                    raise FER2013FormatError(f"vote counts must be 0..{MAX_VOTES}, got {counts}")
            except FER2013FormatError as e:
                raise FER2013FormatError(f"{path}, row {row} (line {line}): {e}") from None
            votes.append(counts)
            usages.append(fields[0])
    out = np.asarray(votes, np.int16).reshape(len(votes), len(FERPLUS_CLASSES))
    out[[r for r in FERPLUS_MISMATCHED_ROWS if r < len(out)]] = -1
    return out, usages


def folder_images(root: Path) -> list[tuple[str, int, Path]]:
    """(split, label, path) of every image in an image-folder tree, in reading order; train
    images go to a carved validation split when the tree has none (see the module docstring)."""
    splits = [d for d in sorted(root.iterdir()) if d.is_dir() and d.name.lower() in FOLDER_SPLITS]
    if not splits:
        raise FER2013FormatError(
            f"{root}: expected sub-folders {sorted(set(FOLDER_SPLITS))} holding <class>/*.png|jpg")
    carve = "validation" not in {FOLDER_SPLITS[d.name.lower()] for d in splits}
    out = []
    for split_dir in splits:
        split = FOLDER_SPLITS[split_dir.name.lower()]
        for class_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
            name = class_dir.name.lower()
            if name not in EMOTIONS:
                raise FER2013FormatError(
                    f"{class_dir}: unknown class folder {class_dir.name!r}; expected {EMOTIONS}")
            for img_path in sorted(class_dir.iterdir()):
                if img_path.suffix.lower() in IMAGE_SUFFIXES:
                    moved = carve and split == "train" and _carved(f"{name}/{img_path.name}")
                    out.append(("validation" if moved else split, EMOTIONS.index(name), img_path))
    return out


def _carved(key: str) -> bool:
    digest = hashlib.sha256(f"{CARVE_SEED}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < CARVE_FRACTION * 2 ** 64


def source_files(source: Path) -> list[Path]:
    """Every file `iter_records(source)` reads: the CSV (+ fer2013new.csv beside it), the compact
    file, or the images."""
    if source.is_dir():
        return [path for _, _, path in folder_images(source)]
    if source.name.endswith(COMPACT_SUFFIX):
        return [source]
    return [source] + [p for p in [source.parent / FERPLUS_FILE] if p.is_file()]


def content_hash(source: Path) -> str:
    """A key of the records `iter_records(source)` gives: names and bytes of every file it reads."""
    h = hashlib.sha256(f"ferjax-fer2013-reader-{READER_VERSION}".encode())
    base = source if source.is_dir() else source.parent
    for path in source_files(source):
        h.update(f"\0{path.relative_to(base)}\0".encode())
        with open(path, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()[:16]


def _iter_folder(root: Path, skip_bad_rows: bool, report: ReadReport) -> Iterator[Record]:
    import cv2

    for row, (split, label, img_path) in enumerate(folder_images(root)):
        img = cv2.imread(str(img_path), cv2.IMREAD_GRAYSCALE)
        if img is None:
            if not skip_bad_rows:
                raise FER2013FormatError(f"{img_path} (row {row}): not a readable image")
            report.bad_rows.append((row, f"{img_path}: not a readable image"))
            continue
        if img.shape != (48, 48):
            img = cv2.resize(img, (48, 48), interpolation=cv2.INTER_AREA)
        report.rows_read += 1
        yield Record(row, split, label, img.reshape(48, 48, 1))
