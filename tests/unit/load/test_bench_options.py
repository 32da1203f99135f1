"""bench.py's options for fixed-rate, soak and the repeated-input workload (no servers run)."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest

from tests.load import bench
from tests.support import free_port


def test_defaults_and_choices() -> None:
    opts = bench.options(bench.parse_args(["--configs", "fixed-rate,soak,cnn-cache-on"]))
    assert (opts.fixed_rate_config, opts.soak_config, opts.soak_minutes) == (
        "cnn-everything-on",
        "cnn-everything-on",
        10.0,
    )
    assert (opts.open_connections, opts.hot_inputs, opts.repeat_fraction) == (256, 64, 0.9)
    assert bench.under_load(opts) == ["cnn-cache-on", "cnn-everything-on"]
    notes = bench.workload_notes(opts)
    assert "80% of capacity" in notes["open loop"] and "70% of capacity" in notes["open loop"]
    assert "90% of requests repeat one of 64 seeded inputs" in notes["repeated inputs"]
    args = ["--configs", "soak", "--soak-config", "mlp-batching", "--soak-minutes", "1"]
    opts = bench.options(bench.parse_args(args))
    assert (opts.soak_config, opts.soak_minutes) == ("mlp-batching", 1.0)
    assert bench.under_load(opts) == ["mlp-batching"]


@pytest.mark.parametrize(
    "args",
    [
        ["--fixed-rate-config", "nope"],
        ["--soak-config", "soak"],
        ["--soak-config", "cnn-cache-on"],
        ["--soak-minutes", "0"],
        ["--open-connections", "0"],
        ["--repeat-fraction", "1.5"],
        ["--hot-inputs", "0"],
        ["--server-env", "FRAMEWORM_LOG_LEVEL info"],  # was dropped without a word
    ],
)
def test_nonsense_is_refused(args: list[str]) -> None:
    with pytest.raises(SystemExit):
        bench.options(bench.parse_args(["--configs", "fixed-rate", *args]))


def test_cache_configurations_differ_only_in_the_cache(tmp_path: Path) -> None:
    on, off = bench.SERVER_CONFIGS["cnn-cache-on"], bench.SERVER_CONFIGS["cnn-cache-off"]
    assert on.env == {
        **bench.SERVER_CONFIGS["cnn-batching"].env,
        "FRAMEWORM_RESULT_CACHE": "memory",
    }
    assert off.env == bench.SERVER_CONFIGS["cnn-batching"].env
    assert bench.FRAMEWORM_BASE["FRAMEWORM_RESULT_CACHE"] == "off"
    opts = bench.options(bench.parse_args(["--configs", "cnn-cache-on", "--hot-inputs", "3"]))
    body = tmp_path / "body.json"
    workload = bench.wrk_workload(on, opts, body)
    assert workload is not None and workload.env["FRAMEWORM_BENCH_HOT"] == "3"
    assert (Path(workload.env["FRAMEWORM_BENCH_BODIES"]) / "hot-002.json").exists()
    assert bench.wrk_workload(bench.SERVER_CONFIGS["cnn-batching"], opts, body) is None


def test_probes_go_straight_to_the_server_whatever_the_proxy_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """urllib followed http_proxy: every server read "not ready" through a proxy, while wrk
    went straight to it."""

    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ready) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/readyz"
            assert bench.http(url) == (200, b"ok")
        finally:
            server.shutdown()


@pytest.mark.parametrize(
    ("device", "problem"),
    [
        ("cpu", None),
        ("cuda", "--device cuda: CUDA is not available on this machine"),
        ("cuda:1", "--device cuda:1: CUDA is not available on this machine"),
        ("mps", "--device 'mps': use cpu, cuda or cuda:N"),
        ("garbage", "--device 'garbage': use cpu, cuda or cuda:N"),
    ],
)
def test_a_device_the_benchmark_cannot_use_is_refused_before_any_server_starts(
    device: str, problem: str | None
) -> None:
    """Each server exited 1 on it, three times, and the sweep ended in a traceback."""
    assert bench.device_problem(device) == problem
