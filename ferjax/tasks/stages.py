"""Cached pipeline stages: each stage's output lives in ROOT/stages/NAME/KEY, KEY a digest of the
stage's config and of the content of its inputs (the digests earlier stages recorded of their
outputs), so a rerun redoes only the stages whose config or inputs changed.

A stage's folder is written through `ferjax.atomic.atomic_folder`: it appears whole, with its
`stage.json` (wall time, output digest, summary), or not at all, so a killed run resumes at the
first stage that has none. Work a stage resumes from inside itself (classifier checkpoints,
cross-validation folds) lives outside these folders, in the stage's own resumable form.

Wall times are whole: an attempt that stops (an interrupt, an error) adds its seconds to
ROOT/stages/unfinished.json, and the attempt that finishes the stage reports them with its own
(`seconds`, `attempts`).
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from ferjax.atomic import atomic_folder, atomic_write_bytes

META = "stage.json"
UNFINISHED = "unfinished.json"  # seconds and attempts of stages whose attempts stopped, by key


def digest(material: Any) -> str:
    """16 hex digits of the sha256 of `material` as canonical JSON."""
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:16]


def arrays_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 (16 hex digits) of named arrays: names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def cached_line(head: str, where: Path | str, seconds: float) -> str:
    """The progress line of a stage read back from an earlier run."""
    return f"{head}: cached ({where}, made in {seconds} s)"


def done_line(head: str, seconds: float, attempts: int) -> str:
    """The progress line of a stage just finished, with its attempts when there were several."""
    return f"{head}: done in {seconds:.1f} s" + (f" ({attempts} attempts)" if attempts > 1 else "")


class Stages:
    """Runs and records the stages of one run folder, printing one progress line per stage."""

    def __init__(self, root: str | Path, total: int):
        self.root, self.total, self.done = Path(root), total, 0
        self.log: dict[str, dict] = {}  # stage name -> its stage.json, plus `cached`

    def run(self, name: str, inputs: Mapping[str, Any], make: Callable[[Path], dict],
            folder_name: str | None = None) -> tuple[Path, dict]:
        """(folder, record) of stage `name` for `inputs` (config and upstream digests): read back
        when made before, else `make(tmp)` writes the outputs into a temporary folder and returns
        the record's fields (at least `output_digest`)."""
        key = digest(inputs)
        folder = self.root / "stages" / (folder_name or name) / key
        self.done += 1
        head = f"[{self.done}/{self.total}] {name}"
        if (folder / META).is_file():
            record = {**json.loads((folder / META).read_text()), "cached": True}
            print(cached_line(head, folder.relative_to(self.root), record["seconds"]), flush=True)
        else:
            for stale in folder.parent.glob(f".{key}.tmp-*"):  # a killed attempt's partial output
                shutil.rmtree(stale, ignore_errors=True)
            print(f"{head}: running -> {folder.relative_to(self.root)}", flush=True)
            with self.timed(key) as elapsed, atomic_folder(folder, overwrite=True) as tmp:
                fields = make(tmp)
                seconds, attempts = elapsed()
                record = {"stage": name, "key": key, "inputs": dict(inputs),
                          "made": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                          "seconds": round(seconds, 1), "attempts": attempts, **fields}
                (tmp / META).write_text(json.dumps(record, indent=2, default=str))
            record["cached"] = False
            print(done_line(head, record["seconds"], attempts), flush=True)
        self.log[name] = record
        return folder, record

    @contextlib.contextmanager
    def timed(self, key: str) -> Iterator[Callable[[], tuple[float, int]]]:
        """Times one attempt at the stage `key`; yields a function giving (seconds of every attempt
        so far, attempts). An attempt that raises (an interrupt included) adds its seconds to the
        ledger of unfinished stages; one that finishes takes its stage off the ledger."""
        earlier = self._unfinished().get(key, {"seconds": 0.0, "attempts": 0})
        t0 = time.perf_counter()
        try:
            yield lambda: (earlier["seconds"] + time.perf_counter() - t0, earlier["attempts"] + 1)
        except BaseException:
            self._set_unfinished(key, {"seconds": round(earlier["seconds"] + time.perf_counter() - t0, 1),
                                       "attempts": earlier["attempts"] + 1})
            raise
        self._set_unfinished(key, None)

    def _unfinished(self) -> dict:
        path = self.root / "stages" / UNFINISHED
        return json.loads(path.read_text()) if path.is_file() else {}

    def _set_unfinished(self, key: str, entry: dict | None) -> None:
        ledger = self._unfinished()
        if entry is None and key not in ledger:
            return
        if entry is None:
            del ledger[key]
        else:
            ledger[key] = entry
        (self.root / "stages").mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.root / "stages" / UNFINISHED, json.dumps(ledger, indent=2, sort_keys=True).encode())

    def record(self, name: str, seconds: float, cached: bool, attempts: int = 1, **fields) -> None:
        """Logs a stage that keeps its own resumable output (a classifier run)."""
        self.done += 1
        self.log[name] = {"stage": name, "seconds": round(seconds, 1), "cached": cached, "attempts": attempts,
                          **fields}

    def table(self) -> list[dict]:
        """One row per stage: name, cached, wall seconds over its attempts (when it was made), attempts, key."""
        return [{"stage": n, "cached": r["cached"], "seconds": r["seconds"], "attempts": r.get("attempts", 1),
                 "key": r.get("key", "")} for n, r in self.log.items()]
