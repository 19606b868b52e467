"""Derived datasets: a registered base dataset plus removed, relabeled and added Training examples.

A derived dataset is a folder, written atomically by `DerivedBuilder.write`:

- `provenance.csv`: one line per Training example of the base (action `kept`, `relabeled` or
  `removed`) and per added example (`added`), columns `COLUMNS` then optional `score_*` columns.
  `base_row` is the base example's `row` field (the FER2013 CSV row, or the index of the file in
  an image folder, whose path is then in `base_path`); for an added example it is the row of the
  example it was made from (-1: none). Labels are class names.
- `added_images.npy`: uint8 [K, H, W, C], line `added_index` of the added examples.
- `manifest.json`, written last: the base dataset with its protocol and data config, the SHA-256
  of the base Training split and of both files above, counts, and the command that made it.

`load` (the `derived` dataset) rebuilds the base from the manifest (only the file locations in
`LOCATION_KEYS` and `CACHE_KEYS` come from the current config), checks that it is the same
base, and applies the entries to the Training split only: validation and test are the base's own
arrays. A base
that is itself derived is flattened: the new folder names the root base and carries the earlier
entries, so a curated set can be balanced and the result still loads in one step.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np

from ferjax.atomic import atomic_folder, file_sha256
from ferjax.data.fer2013 import EMOTIONS, folder_images

FORMAT, VERSION = "ferjax-derived-dataset", 1
MANIFEST, PROVENANCE, ADDED = "manifest.json", "provenance.csv", "added_images.npy"
ACTIONS = ("kept", "relabeled", "removed", "added")
SOURCES = ("original", "generated")
COLUMNS = ("train_index", "source", "action", "base_row", "base_path", "original_label", "label",
           "reason", "generator_checkpoint", "added_index")
SCORE_PREFIX = "score_"
# Data config keys saying where files are on this machine, not which data: the current config's
# non-empty source path replaces the manifest's; the cache folder always comes from the current config.
LOCATION_KEYS, CACHE_KEYS = ("fer2013_path",), ("tfds_data_dir",)
DERIVED = "derived"  # the registered name of this dataset


class DerivedDatasetError(ValueError):
    """A derived dataset folder is incomplete, inconsistent, or does not match its base."""


@dataclasses.dataclass
class Entry:
    """Provenance of one Training example (see the module docstring for the fields)."""

    source: str
    action: str
    base_row: int
    original_label: int
    label: int
    reason: str = ""
    generator_checkpoint: str = ""
    added_index: int = -1
    base_path: str = ""
    scores: dict[str, float] = dataclasses.field(default_factory=dict)


def fingerprint(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of a split's images, labels and rows (shapes and dtypes included)."""
    h = hashlib.sha256()
    for key in ("image", "label", "row"):
        if key in arrays:
            a = np.ascontiguousarray(arrays[key])
            h.update(f"{key}:{a.dtype.str}:{a.shape}\0".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def _rows(split: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.asarray(split["row"]) if "row" in split else np.arange(len(split["label"]))


def _data_dict(cfg: Any) -> dict:
    data = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)
    data.pop("derived_dir", None)
    return data


def _row_paths(data: Mapping[str, Any]) -> dict[int, str]:
    """row -> image path (relative to the source folder) when the base reads a FER2013 image folder."""
    if "fer2013_path" not in data:
        return {}
    from ferjax.data.loading import resolve_source  # noqa: PLC0415  (imports TFDS)

    source = resolve_source(data["fer2013_path"] or None)
    if not source.is_dir():
        return {}
    return {row: str(path.relative_to(source)) for row, (_, _, path) in enumerate(folder_images(source))}


def _per_class(labels: np.ndarray, classes: Sequence[str]) -> dict[str, int]:
    return {name: int((labels == i).sum()) for i, name in enumerate(classes)}


# ------------------------------------------------------------------------------------- reading
def _read_manifest(folder: Path) -> dict:
    if not folder.is_dir():
        raise DerivedDatasetError(f"derived dataset folder {folder} does not exist; set "
                                  f"--config.data.derived_dir to a folder written by balance_fer2013 "
                                  f"or a curation run")
    path = folder / MANIFEST
    incomplete = (f"{folder} is not a complete derived dataset: {{why}}. Its write was interrupted or "
                  f"it is not a derived dataset folder; recreate it with the command that made it")
    if not path.is_file():
        raise DerivedDatasetError(incomplete.format(why=f"{MANIFEST} (written last) is missing"))
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DerivedDatasetError(incomplete.format(why=f"{MANIFEST} is not valid JSON ({e})")) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not manifest.get("complete"):
        raise DerivedDatasetError(incomplete.format(
            why=f"{MANIFEST} lacks format={FORMAT!r} and complete=true"))
    if manifest.get("version") != VERSION:
        raise DerivedDatasetError(f"{path}: version {manifest.get('version')!r}; this ferjax reads "
                                  f"version {VERSION}")
    for name, digest in manifest["files"].items():
        file = folder / name
        if not file.is_file() or file_sha256(file) != digest:
            raise DerivedDatasetError(
                f"{file} is missing or changed since {MANIFEST} was written (SHA-256 differs); "
                f"recreate the folder with: {manifest.get('command', 'the command that made it')}")
    return manifest


def _parse_entry(line: dict, classes: Sequence[str], where: str) -> tuple[int, Entry]:
    def integer(field: str) -> int:
        try:
            return int(line[field])
        except (TypeError, ValueError):
            raise DerivedDatasetError(f"{where}: {field}={line[field]!r} is not an integer") from None

    def label(field: str) -> int:
        if line[field] not in classes:
            raise DerivedDatasetError(f"{where}: {field}={line[field]!r}; expected one of {list(classes)}")
        return classes.index(line[field])

    for field, allowed in (("source", SOURCES), ("action", ACTIONS)):
        if line[field] not in allowed:
            raise DerivedDatasetError(f"{where}: {field}={line[field]!r}; expected one of {list(allowed)}")
    scores = {}
    for key, value in line.items():
        if key.startswith(SCORE_PREFIX) and value not in ("", None):
            try:
                scores[key[len(SCORE_PREFIX):]] = float(value)
            except ValueError:
                raise DerivedDatasetError(f"{where}: {key}={value!r} is not a number") from None
    entry = Entry(source=line["source"], action=line["action"], base_row=integer("base_row"),
                  original_label=label("original_label"), label=label("label"),
                  reason=line["reason"], generator_checkpoint=line["generator_checkpoint"],
                  added_index=integer("added_index"), base_path=line["base_path"], scores=scores)
    return integer("train_index"), entry


def read(folder: str | os.PathLike) -> tuple[dict, list[Entry], np.ndarray]:
    """(manifest, entries, added images) of a complete derived dataset folder; refuses others."""
    folder = Path(folder)
    manifest = _read_manifest(folder)
    classes = manifest["classes"]
    path = folder / PROVENANCE
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DerivedDatasetError(f"{path}: header lacks columns {missing}; expected {list(COLUMNS)}")
        parsed = [_parse_entry(line, classes, f"{path}, line {n}") for n, line in enumerate(reader, 2)]
    added = np.load(folder / ADDED, allow_pickle=False)
    entries = [e for _, e in parsed]
    expected = _train_indices(entries)
    for n, ((index, _), want) in enumerate(zip(parsed, expected), 2):
        if index != want:
            raise DerivedDatasetError(f"{path}, line {n}: train_index={index}, expected {want} "
                                      f"(kept and relabeled base examples in order, then added ones)")
    return manifest, entries, added


def _train_indices(entries: Sequence[Entry]) -> list[int]:
    """Position of each entry in the derived Training split (-1 when removed): base examples
    that stay, in base order, then added examples by `added_index`."""
    out, n = [], 0
    for e in entries:
        if e.action in ("kept", "relabeled"):
            out.append(n)
            n += 1
        else:
            out.append(-1)
    for i, e in sorted(enumerate(entries), key=lambda p: p[1].added_index):
        if e.action == "added":
            out[i] = n
            n += 1
    return out


# ------------------------------------------------------------------------------------ applying
def _check(entries: Sequence[Entry], train: Mapping[str, np.ndarray], n_added: int, where: str) -> None:
    """Every base Training example has exactly one entry with its label; added entries cover
    `added_images` exactly once."""
    rows, labels = _rows(train), np.asarray(train["label"])
    index = {int(r): i for i, r in enumerate(rows)}
    seen = np.zeros(len(rows), bool)
    added = []
    for n, e in enumerate(entries):
        at = f"{where}: entry {n} (base_row {e.base_row})"
        if e.action == "added":
            added.append(e.added_index)
            continue
        if e.source != "original":
            raise DerivedDatasetError(f"{at}: a {e.action} example must have source 'original'")
        i = index.get(e.base_row)
        if i is None:
            raise DerivedDatasetError(f"{at}: no such row in the base Training split")
        if seen[i]:
            raise DerivedDatasetError(f"{at}: the row has two entries")
        if labels[i] != e.original_label:
            raise DerivedDatasetError(f"{at}: original_label {e.original_label} but the base has "
                                      f"{labels[i]}; the base data differ from the one it was made on")
        seen[i] = True
    if not seen.all():
        raise DerivedDatasetError(f"{where}: {int((~seen).sum())} base Training rows have no entry "
                                  f"(first: row {int(rows[~seen][0])})")
    if sorted(added) != list(range(n_added)):
        raise DerivedDatasetError(f"{where}: added entries' added_index must cover 0..{n_added - 1} "
                                  f"once each ({len(added)} added entries, {n_added} added images)")


def apply(base: Mapping[str, Mapping[str, np.ndarray]], entries: Sequence[Entry],
          added: np.ndarray, where: str = "derived dataset") -> dict[str, dict[str, np.ndarray]]:
    """The base splits with `entries` applied to `train`; other splits are the base's arrays."""
    train = base["train"]
    _check(entries, train, len(added), where)
    if len(added) and added.shape[1:] != train["image"].shape[1:]:
        raise DerivedDatasetError(f"{where}: added images have shape {added.shape[1:]}, the base "
                                  f"{train['image'].shape[1:]}")
    position = {int(r): i for i, r in enumerate(_rows(train))}
    stay = [e for e in entries if e.action in ("kept", "relabeled")]
    keep = np.sort(np.asarray([position[e.base_row] for e in stay], np.int64))
    label_of = {position[e.base_row]: e.label for e in stay}
    new = sorted((e for e in entries if e.action == "added"), key=lambda e: e.added_index)
    out = {}
    for key, values in train.items():
        values = np.asarray(values)
        if key == "image":
            extra = added.astype(values.dtype)
        elif key == "label":
            extra = np.asarray([e.label for e in new], values.dtype)
        else:  # per-example metadata the added examples lack (row, FER+ votes): -1
            extra = np.full((len(new),) + values.shape[1:], -1, values.dtype)
        out[key] = np.concatenate([values[keep], extra])
    out["label"][:len(keep)] = [label_of[i] for i in keep]
    splits = dict(base)
    splits["train"] = out
    return splits


def load_base(base: Mapping[str, Any], cfg: Any, folder: Path) -> dict[str, dict[str, np.ndarray]]:
    """The base splits named in a manifest, refused unless their Training split is the same."""
    from ferjax.registry import DATASETS  # noqa: PLC0415  (registry modules import this one)

    data = dict(base["data"])
    for key in LOCATION_KEYS:
        if cfg is not None and cfg.get(key):
            data[key] = cfg.get(key)
    for key in CACHE_KEYS:
        if key in data:
            data[key] = (cfg.get(key) if cfg is not None else None) or ""
    splits = DATASETS.create(base["dataset"], cfg=ml_collections.ConfigDict(data),
                             protocol=base["protocol"])
    got = fingerprint(splits["train"])
    if got != base["train_sha256"]:
        raise DerivedDatasetError(
            f"{folder} was made on a {base['dataset']!r} Training split with SHA-256 "
            f"{base['train_sha256'][:16]}..., the data found now give {got[:16]}...: point "
            f"--config.data.fer2013_path at the same source file it was made from "
            f"({base['data'].get('fer2013_path') or 'the default location'})")
    return splits


def load(cfg: Any, protocol: str = "original") -> dict[str, dict[str, np.ndarray]]:
    """Splits of the derived dataset in `cfg.derived_dir` (the `derived` dataset).

    `cfg.limit_per_split` (smoke tests) keeps the first N examples of every split afterwards.
    """
    folder = cfg.get("derived_dir") if cfg is not None else None
    if not folder:
        raise DerivedDatasetError("dataset 'derived' needs --config.data.derived_dir=FOLDER (a folder "
                                  "written by balance_fer2013 or a curation run)")
    folder = Path(folder).expanduser()
    manifest, entries, added = read(folder)
    base = manifest["base"]
    if protocol != base["protocol"]:
        raise DerivedDatasetError(f"{folder} was made on {base['dataset']!r} under protocol "
                                  f"{base['protocol']!r}, not {protocol!r}: set "
                                  f"--config.protocol={base['protocol']}")
    splits = apply(load_base(base, cfg, folder), entries, added, str(folder))
    limit = cfg.get("limit_per_split") or 0
    if limit:
        splits = {k: {f: v[:limit] for f, v in arr.items()} for k, arr in splits.items()}
    return splits


# ------------------------------------------------------------------------------------ building
class DerivedBuilder:
    """Records removals, relabels and additions on a base dataset's Training split, then writes
    the derived dataset folder. A `derived` base is flattened onto its own base (see module doc)."""

    def __init__(self, dataset: str, data_cfg: Any, protocol: str = "original",
                 classes: Sequence[str] = EMOTIONS):
        self.classes = tuple(classes)
        self.history: list[str] = []
        if dataset == DERIVED:
            folder = Path(data_cfg.get("derived_dir") or "")
            manifest, entries, added = read(folder)
            self.base = manifest["base"]
            if protocol != self.base["protocol"]:
                raise DerivedDatasetError(f"{folder} was made under protocol {self.base['protocol']!r}, "
                                          f"not {protocol!r}")
            if tuple(manifest["classes"]) != self.classes:
                raise DerivedDatasetError(f"{folder} has classes {manifest['classes']}, not {self.classes}")
            self.history = [*manifest.get("history", []), manifest["command"]]
            self.base_splits = load_base(self.base, data_cfg, folder)
            _check(entries, self.base_splits["train"], len(added), str(folder))
            self._added_images = list(added)
        else:
            from ferjax.registry import DATASETS  # noqa: PLC0415

            self.base_splits = DATASETS.create(dataset, cfg=data_cfg, protocol=protocol)
            data = _data_dict(data_cfg)
            train = self.base_splits["train"]
            self.base = {"dataset": dataset, "protocol": protocol, "data": data,
                         "train_sha256": fingerprint(train), "train_count": len(train["label"])}
            paths = _row_paths(data)
            entries = [Entry("original", "kept", int(r), int(lab), int(lab), base_path=paths.get(int(r), ""))
                       for r, lab in zip(_rows(train), train["label"])]
            self._added_images = []
        self._entries = [e for e in entries if e.action != "added"]
        self._added = sorted((e for e in entries if e.action == "added"), key=lambda e: e.added_index)
        self._by_row = {e.base_row: e for e in self._entries}

    @property
    def entries(self) -> list[Entry]:
        """Base entries in base order, then added ones."""
        return self._entries + self._added

    def splits(self) -> dict[str, dict[str, np.ndarray]]:
        """The derived splits as they stand (what `load` will return once written)."""
        return apply(self.base_splits, self.entries, self._added_array(), "builder")

    def base_examples(self, label: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, images) of the base Training examples that now carry `label` (not removed, not added)."""
        train = self.base_splits["train"]
        position = {int(r): i for i, r in enumerate(_rows(train))}
        rows = np.asarray([e.base_row for e in self._entries
                           if e.action in ("kept", "relabeled") and e.label == label], np.int64)
        return rows, np.asarray(train["image"])[[position[r] for r in rows]]

    def _added_array(self) -> np.ndarray:
        shape = self.base_splits["train"]["image"].shape[1:]
        return np.stack(self._added_images) if self._added_images else np.zeros((0, *shape), np.uint8)

    def _base_entry(self, row: int) -> Entry:
        try:
            return self._by_row[int(row)]
        except KeyError:
            raise DerivedDatasetError(f"row {row} is not in the base Training split") from None

    def _label(self, label: int | str) -> int:
        if isinstance(label, str):
            if label not in self.classes:
                raise DerivedDatasetError(f"label {label!r}; expected one of {list(self.classes)}")
            return self.classes.index(label)
        if not 0 <= int(label) < len(self.classes):
            raise DerivedDatasetError(f"label {label}; expected 0..{len(self.classes) - 1}")
        return int(label)

    def remove(self, row: int, reason: str, scores: Mapping[str, float] | None = None) -> None:
        """Leaves base row `row` out of the Training split."""
        e = self._base_entry(row)
        e.action, e.label, e.reason = "removed", e.original_label, reason
        e.scores.update(scores or {})

    def annotate(self, row: int, scores: Mapping[str, float]) -> None:
        """Records `score_*` values for base row `row` without changing its action."""
        self._base_entry(row).scores.update(scores)

    def relabel(self, row: int, label: int | str, reason: str,
                scores: Mapping[str, float] | None = None) -> None:
        """Gives base row `row` another label (its original label: refused)."""
        e, label = self._base_entry(row), self._label(label)
        if label == e.original_label:
            raise DerivedDatasetError(f"row {row} already has label {self.classes[label]!r}")
        e.action, e.label, e.reason = "relabeled", label, reason
        e.scores.update(scores or {})

    def add(self, images: np.ndarray, labels: Sequence[int | str], *, source: str,
            base_rows: Sequence[int], reason: str, generator_checkpoint: str = "",
            scores: Mapping[str, Sequence[float]] | None = None) -> None:
        """Appends uint8 `images` with `labels`; `base_rows[i]` is the base row image i was made
        from (-1: none), whose current label becomes its `original_label`."""
        images = np.asarray(images)
        shape = self.base_splits["train"]["image"].shape[1:]
        if images.dtype != np.uint8 or images.shape[1:] != shape:
            raise DerivedDatasetError(f"added images must be uint8 [N, {', '.join(map(str, shape))}], "
                                      f"got {images.dtype} {list(images.shape)}")
        if not len(images) == len(labels) == len(base_rows):
            raise DerivedDatasetError(f"{len(images)} images, {len(labels)} labels, {len(base_rows)} base rows")
        if source not in SOURCES:
            raise DerivedDatasetError(f"source {source!r}; expected one of {list(SOURCES)}")
        scores = {k: np.asarray(v, float) for k, v in (scores or {}).items()}
        for i, (image, label, row) in enumerate(zip(images, labels, base_rows)):
            origin = self._base_entry(row) if row >= 0 else None
            self._added.append(Entry(
                source, "added", int(row), origin.label if origin else self._label(label),
                self._label(label), reason, generator_checkpoint, len(self._added_images),
                origin.base_path if origin else "", {k: float(v[i]) for k, v in scores.items()}))
            self._added_images.append(image)

    def counts(self) -> dict:
        """Action totals and per-class Training counts of the base and of the derived set."""
        actions = {a: sum(e.action == a for e in self.entries) for a in ACTIONS}
        before = np.asarray(self.base_splits["train"]["label"])
        after = np.asarray([e.label for e in self.entries if e.action != "removed"])
        return {"base_train": len(before), **actions, "train": len(after),
                "train_per_class_before": _per_class(before, self.classes),
                "train_per_class_after": _per_class(after, self.classes)}

    def write(self, out_dir: str | os.PathLike, command: str, info: Mapping[str, Any] | None = None,
              overwrite: bool = False) -> Path:
        """Writes the folder atomically (temporary sibling, fsync, rename; manifest last)."""
        entries, added = self.entries, self._added_array()
        apply(self.base_splits, entries, added, "builder")  # refuse to write an inconsistent set
        out_dir = Path(out_dir)
        with atomic_folder(out_dir, overwrite=overwrite) as tmp:
            np.save(tmp / ADDED, added, allow_pickle=False)
            self._write_provenance(tmp / PROVENANCE, entries)
            manifest = {
                "format": FORMAT, "version": VERSION, "complete": True,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "command": command, "history": self.history, "classes": list(self.classes),
                "base": self.base, "counts": self.counts(), "info": dict(info or {}),
                "files": {name: file_sha256(tmp / name) for name in (PROVENANCE, ADDED)}}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
        return out_dir

    def _write_provenance(self, path: Path, entries: Sequence[Entry]) -> None:
        score_names = sorted({k for e in entries for k in e.scores})
        with open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow([*COLUMNS, *(SCORE_PREFIX + k for k in score_names)])
            for index, e in zip(_train_indices(entries), entries):
                w.writerow([index, e.source, e.action, e.base_row, e.base_path,
                            self.classes[e.original_label], self.classes[e.label], e.reason,
                            e.generator_checkpoint, e.added_index,
                            *(repr(e.scores[k]) if k in e.scores else "" for k in score_names)])
