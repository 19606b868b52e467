"""Multi-host preemption: under jax.distributed a SIGTERM to one process stops every process at
the same step, with a checkpoint of that step (JAX's preemption sync point, via Orbax)."""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_sigterm_to_one_process_stops_all_at_the_same_step(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    worker = str(REPO / "tests" / "helpers" / "preempt_worker.py")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    logs = [(tmp_path / f"out{i}.txt", tmp_path / f"err{i}.txt") for i in range(2)]
    handles = [(out.open("w"), err.open("w")) for out, err in logs]  # files, not pipes: no writer blocks
    procs = [subprocess.Popen([sys.executable, worker, str(i), "2", port, str(tmp_path / "run")],
                              env=env, stdout=out, stderr=err, text=True)
             for i, (out, err) in enumerate(handles)]

    def tails():
        return "\n".join(f"process {i} (exit {p.poll()}):\n{out.read_text()[-1000:]}\n{err.read_text()[-2000:]}"
                         for i, (p, (out, err)) in enumerate(zip(procs, logs)))

    try:
        deadline = time.monotonic() + 120
        while not all("training" in out.read_text() for out, _ in logs):  # both loops run
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), tails()
            time.sleep(0.1)
        time.sleep(2.0)  # some steps run on both processes
        procs[0].send_signal(signal.SIGTERM)  # the notice reaches one process only
        for p in procs:
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                pytest.fail(f"no stop within 120 s of the notice:\n{tails()}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for h in (h for pair in handles for h in pair):
            h.close()
    outs = [(out.read_text(), err.read_text()) for out, err in logs]
    steps = []
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 3, f"exit {p.returncode}:\n{out[-1000:]}\n{err[-2000:]}"
        found = re.search(r"interrupted stopped by signal SIGTERM .* at step (\d+);", out)
        assert found, out[-1000:]
        steps.append(int(found.group(1)))
    assert steps[0] == steps[1] > 0
    saved = sorted(int(d.name) for d in (tmp_path / "run" / "checkpoints" / "latest").iterdir()
                   if d.name.isdigit())
    assert saved[-1] == steps[0]
