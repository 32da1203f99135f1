"""Peer: LitServe with dynamic batching (max 32 requests, 5 ms), shared/BENCHMARK.md's row.

One inference worker on the CPU, torch on one thread, one API server process; it speaks
Frameworm's JSON on Frameworm's paths (`POST /infer`, `GET /readyz` as LitServe's health check,
200 once the worker has loaded the model) so the same wrk script and answer check apply. Runs
from its own venv (`bash tests/load/peers/setup.sh` makes `.peers/litserve`), with the
repository on PYTHONPATH for `models.families`; bench.py's `litserve` launcher starts it:

    PYTHONPATH=. FRAMEWORM_BENCH_FAMILY=mlp FRAMEWORM_BENCH_CONFIG='{...}' \
        FRAMEWORM_BENCH_WEIGHTS=<registry>/bench-mlp/1.0.0/model.safetensors \
        .peers/litserve/bin/python -m tests.load.peers.litserve_server --port 8000
"""

from __future__ import annotations

import argparse
import functools
import os
import signal

import litserve as ls
import torch

from tests.load.peers.peer_model import answer, load_from_env, one_thread, rows, tensor

MAX_BATCH_SIZE = 32
BATCH_TIMEOUT_S = 0.005

Batch = tuple[torch.Tensor, list[int]]  # all rows, and how many came from each request


class BenchAPI(ls.LitAPI):  # type: ignore[misc]  # litserve is untyped
    def setup(self, device: str) -> None:
        one_thread()
        self.model = load_from_env()

    # LitServe reads these two signatures to type the FastAPI endpoint: left unannotated, the
    # body is parsed with `await request.json()` and the answer is FastAPI's default JSON
    # response, as in LitServe's own examples.
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        return tensor(rows(request))

    def batch(self, inputs: list[torch.Tensor]) -> Batch:
        return torch.cat(inputs), [len(x) for x in inputs]

    def predict(self, x: Batch) -> Batch:
        with torch.inference_mode():
            return self.model(x[0]), x[1]

    def unbatch(self, output: Batch) -> list[torch.Tensor]:
        return list(torch.split(output[0], output[1]))

    def encode_response(self, output):  # type: ignore[no-untyped-def]
        return answer(output)


def _on_sigterm(main_pid: int, signum: int, frame: object) -> None:
    if os.getpid() != main_pid:  # the forked API server, stopped by LitServe: quietly
        raise SystemExit(0)
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # LitServe shuts its workers down on KeyboardInterrupt; a SIGTERM alone would end this
    # process and leave them behind.
    signal.signal(signal.SIGTERM, functools.partial(_on_sigterm, os.getpid()))
    api = BenchAPI(max_batch_size=MAX_BATCH_SIZE, batch_timeout=BATCH_TIMEOUT_S, api_path="/infer")
    server = ls.LitServer(
        api, accelerator="cpu", devices=1, workers_per_device=1, healthcheck_path="/readyz"
    )
    server.run(
        host=args.host,
        port=args.port,
        num_api_servers=1,
        log_level="warning",
        generate_client_file=False,
    )


if __name__ == "__main__":
    main()
