"""ferjax.tasks.stages: cached stages, and wall times that count every attempt of a resumed stage."""
import json
import time

import numpy as np
import pytest

from ferjax.tasks.stages import UNFINISHED, Stages, arrays_digest


def _make(seconds: float, fail: BaseException | None = None):
    def make(tmp):
        time.sleep(seconds)
        if fail is not None:
            raise fail
        (tmp / "out.txt").write_text("done")
        return {"output_digest": arrays_digest({"x": np.arange(3)})}
    return make


def test_an_interrupted_stage_reports_the_seconds_of_every_attempt(tmp_path):
    first = Stages(tmp_path, 1)
    with pytest.raises(KeyboardInterrupt):
        first.run("slow", {"k": 1}, _make(0.3, KeyboardInterrupt()))
    ledger = json.loads((tmp_path / "stages" / UNFINISHED).read_text())
    (key, entry), = ledger.items()
    assert entry["attempts"] == 1 and entry["seconds"] >= 0.3
    assert not list((tmp_path / "stages" / "slow").glob(key))  # nothing half-made is taken as made

    second = Stages(tmp_path, 1)
    folder, record = second.run("slow", {"k": 1}, _make(0.2))
    assert record["attempts"] == 2 and record["seconds"] >= 0.5 and not record["cached"]
    assert (folder / "out.txt").read_text() == "done"
    assert json.loads((tmp_path / "stages" / UNFINISHED).read_text()) == {}  # off the ledger when made

    third = Stages(tmp_path, 1)
    _, again = third.run("slow", {"k": 1}, _make(5.0, RuntimeError("a cached stage must not run")))
    assert again["cached"] and again["seconds"] == record["seconds"]
    assert third.table() == [{"stage": "slow", "cached": True, "seconds": record["seconds"], "attempts": 2,
                              "key": record["key"]}]


def test_timed_counts_attempts_of_work_kept_outside_the_stage_folders(tmp_path):
    stages = Stages(tmp_path, 2)
    with pytest.raises(RuntimeError), stages.timed("run-1"):
        time.sleep(0.1)
        raise RuntimeError("interrupted training")
    with stages.timed("run-1") as elapsed:
        time.sleep(0.1)
        seconds, attempts = elapsed()
    assert attempts == 2 and seconds >= 0.2
    with stages.timed("run-2") as elapsed:  # another key starts from zero
        assert elapsed()[1] == 1 and elapsed()[0] < 0.1
