"""The result-cache workload: bodies (tests/load/repeat.py) and wrk_repeat.lua under wrk."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import subprocess
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.load.repeat import MARKER, parse_body, unique_body, workload, write_bodies
from tests.load.report import parse_wrk_output
from tests.support import require_executable


def test_bodies_are_seeded_distinct_and_well_formed(tmp_path: Path) -> None:
    out = write_bodies(tmp_path, hot=5)
    again = write_bodies(tmp_path, hot=5)
    assert out == again and sorted(p.name for p in out.iterdir()) == [
        *(f"hot-{i:03d}.json" for i in range(5)),
        "unique.json",
    ]
    hot = [parse_body((out / f"hot-{i:03d}.json").read_text()) for i in range(5)]
    assert all(x.shape == (1, 784) and x.min() >= 0 and x.max() < 1 for x in hot)
    assert len({x.tobytes() for x in hot}) == 5
    template = (out / "unique.json").read_text()
    assert template.count(MARKER) == 1
    uniques = [parse_body(unique_body(template, c)) for c in (0, 1, 999, 1000, 10**6, 10**9 - 1)]
    assert all(x.shape == (1, 784) for x in uniques)
    assert len({x.tobytes() for x in uniques + hot}) == 11  # distinct as float32, too
    other = write_bodies(tmp_path / "b", hot=5)
    assert (other / "hot-003.json").read_text() == (out / "hot-003.json").read_text()


def test_workload_refuses_nonsense(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="repeat"):
        workload(tmp_path, hot=4, repeat=1.5)
    w = workload(tmp_path, hot=4, repeat=0.75)
    assert w.script.name == "wrk_repeat.lua" and w.env["FRAMEWORM_BENCH_REPEAT"] == "0.75"


def test_wrk_repeat_sends_the_chosen_share_of_repeats(tmp_path: Path) -> None:
    require_executable("wrk")
    seen: Counter[str] = Counter()
    order: list[str] = []
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            good = self.headers["x-api-key"] == "k" and parse_body(body.decode()).shape == (1, 784)
            digest = hashlib.sha256(body).hexdigest() if good else "bad"
            with lock:
                seen[digest] += 1
                order.append(digest)
            with contextlib.suppress(OSError):  # wrk hangs up at the end
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    w = workload(tmp_path, hot=8, repeat=0.9)
    try:
        done = subprocess.run(
            [
                *("wrk", "-t1", "-c1", "-d2s", "-s", str(w.script), "-H", "X-API-Key: k"),
                f"http://127.0.0.1:{server.server_address[1]}/infer",
            ],
            env={**os.environ, **w.env},
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    finally:
        server.shutdown()
        server.server_close()
    result = parse_wrk_output(done.stdout)
    assert result.non2xx == 0 and "bad" not in seen
    # A floor on the sample the ratios below need, not on speed: a few per second would do.
    assert result.requests >= 20 and len(order) >= 20
    hot = [d for d, n in seen.items() if n > 1]
    unique = [d for d, n in seen.items() if n == 1]
    assert len(hot) <= 8
    # Every 10th request is unique, the others go round the 8 hot bodies.
    assert sum(seen[d] for d in unique) == pytest.approx(len(order) / 10, abs=1 + 8)
    repeats = sum(1 for i, d in enumerate(order) if d in order[:i][-80:])
    assert repeats / len(order) == pytest.approx(0.9, abs=0.02 + 8 / len(order))
    assert np.isfinite(result.p99_us)
