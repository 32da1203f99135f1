"""The benchmark stopped by a signal: what it started stops with it (tests/load/bench.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.load.bench import process_tree
from tests.support import children, require_executable

ROOT = Path(__file__).resolve().parents[3]


def test_a_sigterm_stops_the_server_and_wrk_and_removes_the_work_directory(
    tmp_path: Path,
) -> None:
    """SIGTERM's default action ended the script alone: the server (on core 0) and wrk went on
    running, parented to init, and the work directory stayed."""
    require_executable("wrk")
    argv = [sys.executable, "-m", "tests.load.bench", "--configs", "mlp-batching"]
    argv += ["--connections", "1", "--warmup", "1", "--duration", "60", "--runs", "1"]
    argv += ["--out", str(tmp_path / "out.md")]
    with children() as started:
        bench = subprocess.Popen(
            argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        started.append(bench)
        assert bench.stdout is not None
        output, workdir = "", None
        while "ready in" not in output:  # the server is up; wrk starts next
            line = bench.stdout.readline()
            assert line, f"the benchmark ended first: {output}"
            output += line
            if found := re.search(r"registering the benchmark models in (\S+)", line):
                workdir = Path(found[1]).parent
        deadline = time.monotonic() + 30
        while not any(_command(pid).startswith(b"wrk") for pid in process_tree(bench.pid)):
            assert time.monotonic() < deadline, "wrk never started"
            time.sleep(0.1)
        spawned = process_tree(bench.pid)[1:]  # the server, and wrk
        bench.send_signal(signal.SIGTERM)
        bench.wait(60)
    left = {pid: _command(pid) for pid in spawned if not _zombie(pid)}
    for pid in left:  # left running: stopped here, by pid, whatever the outcome
        os.kill(pid, signal.SIGKILL)
    assert left == {}
    assert workdir is not None and not workdir.exists(), workdir


def _command(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].rsplit(b"/", 1)[-1]
    except OSError:
        return b""


def _zombie(pid: int) -> bool:
    """Gone or a zombie: exited either way."""
    try:
        return " Z " in Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
