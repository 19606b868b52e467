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
    procs = [subprocess.Popen([sys.executable, worker, str(i), "2", port, str(tmp_path / "run")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        for p in procs:  # wait until both loops run (gloo also prints to stdout)
            while (line := p.stdout.readline()) and line.strip() != "training":
                pass
            assert line, p.stderr.read()[-2000:]
        time.sleep(2.0)  # some steps run on both processes
        procs[0].send_signal(signal.SIGTERM)  # the notice reaches one process only
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
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
