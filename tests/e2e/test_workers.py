"""`frameworm serve --workers 2`: one port, two worker processes, one set of metrics, one drain.

The supervisor keeps prometheus_client's multiprocess files in a directory named in its
workers' environment; reading each worker's own file shows that both served, and /metrics,
answered by either worker, must add them up.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from models.registry import ModelRegistry
from tests.support.models import MODEL, register_mlp
from tests.support.process import INFER_BODY, READY_TIMEOUT_S, launch, stop
from tests.support.server import ServerProcess

WORKERS = 2
REQUESTS = 60
QUEUE_ITEMS = 2048  # FRAMEWORM_MAX_QUEUE_ITEMS' default: each live worker reports it


def worker_pids(supervisor: int) -> list[int]:
    """The supervisor's spawned worker processes (its resource tracker left out)."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return [
        int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def metrics_dir(pid: int) -> Path:
    for item in (Path(f"/proc/{pid}") / "environ").read_bytes().split(b"\0"):
        if item.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
            return Path(os.fsdecode(item.split(b"=", 1)[1]))
    raise AssertionError(f"worker {pid} has no PROMETHEUS_MULTIPROC_DIR")


def infer_requests_in(files: list[Path]) -> float:
    """http_requests_total for /infer, summed over the given multiprocess files."""
    total = 0.0
    for family in MultiProcessCollector.merge([str(f) for f in files]):  # type: ignore[no-untyped-call]
        for sample in family.samples:
            if sample.name == "http_requests_total" and sample.labels["handler"] == "/infer":
                total += sample.value
    return total


def scrape(client: httpx.Client, name: str, **labels: str) -> float:
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] == name and all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


@pytest.fixture(scope="module")
def tiny_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("workers-registry")
    registry = ModelRegistry(work / "registry")
    register_mlp(registry, "1.0.0", work, seed=0)
    registry.promote(MODEL, "1.0.0", "production", actor="tests")
    return work / "registry"


def test_two_workers_serve_one_port_share_metrics_and_both_drain_on_sigterm(
    tmp_path: Path, tiny_registry: Path
) -> None:
    env = {"FRAMEWORM_DRAIN_DELAY_S": "0.5"}
    server = launch(tmp_path, tiny_registry, env, options=["--workers", str(WORKERS)])
    try:
        wait_for_every_worker(server)
        workers = worker_pids(server.pid)
        assert len(workers) == WORKERS, workers
        # The supervisor serves nothing: it held torch (about 240 MiB) for no use.
        assert "libtorch" in Path(f"/proc/{workers[0]}/maps").read_text()
        assert "libtorch" not in Path(f"/proc/{server.pid}/maps").read_text()
        # A fresh connection per request, so the kernel spreads them over both workers.
        no_reuse = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=server.url, timeout=10, limits=no_reuse) as client:
            statuses = [client.post("/infer", json=INFER_BODY).status_code for _ in range(REQUESTS)]
            # A worker counts a request just after answering it: wait (bounded) for the last.
            deadline = time.monotonic() + 10
            while scrape(client, "http_requests_total", handler="/infer") < REQUESTS:
                assert time.monotonic() < deadline, "the counts never added up"
                time.sleep(0.05)
            scraped = [scrape(client, "http_requests_total", handler="/infer") for _ in range(4)]
            directory = metrics_dir(workers[0])
            per_worker = [
                infer_requests_in(sorted(directory.glob(f"*_{pid}.db"))) for pid in workers
            ]
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(60)
    finally:
        stop(server)
    logs = server.logs()
    assert statuses == [200] * REQUESTS
    assert sum(per_worker) == REQUESTS and all(per_worker), per_worker  # both served
    assert scraped == [REQUESTS] * 4, "every scrape, by either worker, adds both up"
    assert code == 0, logs
    assert logs.count("drain started") == WORKERS, logs
    assert logs.count("Finished server process") == WORKERS, logs
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)


def wait_for_every_worker(server: ServerProcess) -> None:
    """Ready, and every worker up: each live one reports the queue capacity, and has served
    its model (a worker reports its capacity before its model is loaded, and a signal before
    that skips the drain delay: nothing can be routed to a worker never ready)."""
    server.wait_ready(READY_TIMEOUT_S)
    with httpx.Client(base_url=server.url, timeout=10) as probe:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while scrape(probe, "frameworm_queue_capacity") < WORKERS * QUEUE_ITEMS:
            assert time.monotonic() < deadline, "a worker never came up"
            time.sleep(0.1)
    wait_for_log(server, '"message":"model ready"', WORKERS)


def _is_zombie(pid: int) -> bool:
    return " Z " in Path(f"/proc/{pid}/stat").read_text()


def test_workers_do_not_outlive_a_killed_supervisor(tmp_path: Path, tiny_registry: Path) -> None:
    # A supervisor killed by SIGKILL cannot remove its metrics directory: in tmp_path, not /tmp.
    env = {"FRAMEWORM_DRAIN_DELAY_S": "0", "TMPDIR": str(tmp_path)}
    server = launch(tmp_path, tiny_registry, env, ["--workers", "2"])
    try:
        wait_for_every_worker(server)
        workers = worker_pids(server.pid)
        assert len(workers) == WORKERS
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)
        deadline = time.monotonic() + 60
        while any(Path(f"/proc/{pid}").exists() and not _is_zombie(pid) for pid in workers):
            assert time.monotonic() < deadline, "a worker kept serving without its supervisor"
            time.sleep(0.1)
    finally:
        for pid in worker_pids_alive(workers):
            os.kill(pid, signal.SIGKILL)
        stop(server)


def worker_pids_alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if Path(f"/proc/{pid}").exists() and not _is_zombie(pid)]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_whole_process_group_drains_each_worker_once(
    tmp_path: Path, tiny_registry: Path, sig: signal.Signals
) -> None:
    """A terminal's Ctrl-C or systemd's control-group kill: each worker gets the signal directly
    and again from the supervisor; the copy must not turn the drain into an exit at once."""
    env = {"FRAMEWORM_DRAIN_DELAY_S": "1"}
    server = launch(tmp_path, tiny_registry, env, options=["--workers", str(WORKERS)])
    try:
        wait_for_every_worker(server)
        os.killpg(server.pid, sig)  # launch() gave the server a group of its own
        code = server.process.wait(60)
    finally:
        stop(server)
    logs = server.logs()
    assert code == 0, logs
    # Logged after the drain delay: a worker that exited at once never gets there.
    assert logs.count("drain: closing the listener") == WORKERS, logs


@pytest.mark.parametrize("after_s", [0.0, 0.02, 0.05, 0.08, 0.1, 0.2])
def test_a_ctrl_c_to_the_group_while_the_workers_start_stops_them_cleanly(
    tmp_path: Path, tiny_registry: Path, after_s: float
) -> None:
    """A Ctrl-C within a new worker's first moments, before it could ignore SIGINT, reached
    its interpreter's start-up: "Fatal Python error: init_import_site", exit 1."""
    server = launch(tmp_path, tiny_registry, {}, options=["--workers", str(WORKERS)])
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not worker_pids(server.pid):
            assert server.process.poll() is None and time.monotonic() < deadline, server.logs()
            time.sleep(0.005)
        time.sleep(after_s)
        os.killpg(server.pid, signal.SIGINT)
        code = server.process.wait(60)
    finally:
        stop(server)
    logs = server.logs()
    assert code == 0, logs
    assert "Fatal Python error" not in logs and "Traceback" not in logs, logs


def test_a_second_signal_to_the_supervisor_stops_the_workers_at_once(
    tmp_path: Path, tiny_registry: Path
) -> None:
    env = {"FRAMEWORM_DRAIN_DELAY_S": "60"}
    server = launch(tmp_path, tiny_registry, env, options=["--workers", str(WORKERS)])
    try:
        wait_for_every_worker(server)
        server.process.send_signal(signal.SIGTERM)
        wait_for_log(server, "drain started", WORKERS)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(30)  # well before the 60 s drain delay
        took = time.monotonic() - started
    finally:
        stop(server)
    logs = server.logs()
    assert took < 30, logs
    assert "drain: closing the listener" not in logs, logs


def test_once_the_workers_close_their_listeners_new_connections_are_refused(
    tmp_path: Path, tiny_registry: Path
) -> None:
    """As with one process: a load balancer retries a refused connection at once, while one
    left in the backlog of a socket nobody accepts on hangs, then is reset."""
    env = {
        "FRAMEWORM_DRAIN_DELAY_S": "0.5",
        "FRAMEWORM_BODY_TIMEOUT_S": "20",
        "FRAMEWORM_SHUTDOWN_TIMEOUT_S": "20",
    }
    server = launch(tmp_path, tiny_registry, env, options=["--workers", str(WORKERS)])
    try:
        wait_for_every_worker(server)
        with socket.create_connection(("127.0.0.1", server.port)) as slow:
            # Its body never comes: one worker stays in the drain, serving it.
            slow.sendall(b"POST /infer HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n")
            time.sleep(0.3)
            server.process.send_signal(signal.SIGTERM)
            wait_for_log(server, "drain: closing the listener", WORKERS)
            time.sleep(0.5)
            assert server.process.poll() is None  # still draining the slow request
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
    finally:
        stop(server)


def wait_for_log(server: ServerProcess, text: str, count: int) -> None:
    deadline = time.monotonic() + 30
    while server.logs().count(text) < count:
        assert time.monotonic() < deadline, server.logs()
        time.sleep(0.05)


def test_one_worker_ignores_an_inherited_multiprocess_directory(
    tmp_path: Path, tiny_registry: Path
) -> None:
    """An earlier process's files there were added into /metrics: its request counts, and
    a version it served reading 1 beside the one served now."""
    stale = tmp_path / "metrics"
    stale.mkdir()
    # A dead process's counts, written as prometheus_client's multiprocess mode writes them.
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from prometheus_client import Counter; Counter('http_requests_total', '', "
            "['method', 'status', 'handler']).labels('POST', '2xx', '/infer').inc(3)",
        ],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(stale)},
        check=True,
        timeout=60,
    )
    server = launch(tmp_path, tiny_registry, {"PROMETHEUS_MULTIPROC_DIR": str(stale)})
    try:
        server.wait_ready(READY_TIMEOUT_S)
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.post("/infer", json=INFER_BODY).status_code == 200
            assert scrape(client, "http_requests_total", handler="/infer") == 1
    finally:
        stop(server)
