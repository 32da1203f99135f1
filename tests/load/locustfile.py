"""Your own load test against a running Frameworm server, with Locust.

Locust is not a project dependency: `pip install locust` (in any venv), then

    FRAMEWORM_API_KEY=... locust -f tests/load/locustfile.py --host http://127.0.0.1:8000

The body is one JSON item for the served model's first input, filled with 0.5 (set
FRAMEWORM_LOAD_INPUT / FRAMEWORM_LOAD_SHAPE for another input, e.g. `image` and `1,28,28`).
This file is for exploring; the project's own, reproducible numbers come from
`python -m tests.load.bench` (wrk, pinned cores; see README.md here).
"""

from __future__ import annotations

import json
import os
from typing import Any

from locust import HttpUser, between, task  # type: ignore[import-not-found,unused-ignore]


def _nested(shape: list[int], value: float) -> Any:
    if not shape:
        return value
    return [_nested(shape[1:], value) for _ in range(shape[0])]


INPUT = os.environ.get("FRAMEWORM_LOAD_INPUT", "x")
SHAPE = [int(d) for d in os.environ.get("FRAMEWORM_LOAD_SHAPE", "784").split(",") if d]
BODY = json.dumps({"inputs": {INPUT: [_nested(SHAPE, 0.5)]}})
HEADERS = {"Content-Type": "application/json"}
if os.environ.get("FRAMEWORM_API_KEY"):
    HEADERS["X-API-Key"] = os.environ["FRAMEWORM_API_KEY"]


class InferUser(HttpUser):  # type: ignore[misc,unused-ignore]
    wait_time = between(0.0, 0.01)

    @task  # type: ignore[untyped-decorator,unused-ignore]
    def infer(self) -> None:
        self.client.post("/infer", data=BODY, headers=HEADERS, name="/infer")
