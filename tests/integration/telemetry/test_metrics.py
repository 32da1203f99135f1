"""Inference gauges while work is under way: a forward pass held open, /metrics read meanwhile."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from models.demo import seed_demo
from models.formats import LoadedModel
from models.registry import ModelRegistry
from tests.integration.app.apps import AppClient, app_settings, running_app

WAIT_S = 10.0
BODY = {"inputs": {"image": [[[[0.0] * 28] * 28]]}}


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppClient]:
    registry = tmp_path_factory.mktemp("registry")
    seed_demo(ModelRegistry(registry))
    with running_app(app_settings(Path(registry), model="cnn-digits")) as client:
        yield client


def gauge(client: AppClient, name: str) -> float:
    """The gauge's one value; 0 while a labelled gauge has no series yet."""
    text = client.get("/metrics").text
    values = [
        s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name
    ]
    assert len(values) <= 1, values
    return values[0] if values else 0.0


def eventually(check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@dataclass
class HeldForward:
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def held_forward(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldForward]:
    """The model's forward pass waits until released (at the latest on teardown)."""
    held, original = HeldForward(), LoadedModel.forward

    def forward(self: LoadedModel, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        held.entered.set()
        held.release.wait(WAIT_S)
        return original(self, inputs)

    monkeypatch.setattr(LoadedModel, "forward", forward)
    try:
        yield held
    finally:
        held.release.set()


def infer_in_background(pool: ThreadPoolExecutor, client: AppClient) -> Future[httpx.Response]:
    return pool.submit(client.post, "/infer", json=BODY)


def test_a_request_waiting_behind_a_running_batch_shows_in_the_queue_depth(
    cnn: AppClient, held_forward: HeldForward
) -> None:
    with ThreadPoolExecutor(2) as pool:
        running = infer_in_background(pool, cnn)
        assert held_forward.entered.wait(WAIT_S)
        assert gauge(cnn, "frameworm_queue_depth") == 0
        waiting = infer_in_background(pool, cnn)
        assert eventually(lambda: gauge(cnn, "frameworm_queue_depth") == 1)
        held_forward.release.set()
        assert running.result(WAIT_S).status_code == 200
        assert waiting.result(WAIT_S).status_code == 200
    assert gauge(cnn, "frameworm_queue_depth") == 0


def test_a_request_being_served_shows_in_the_inflight_gauge(
    cnn: AppClient, held_forward: HeldForward
) -> None:
    with ThreadPoolExecutor(1) as pool:
        running = infer_in_background(pool, cnn)
        try:
            assert held_forward.entered.wait(WAIT_S)
            assert gauge(cnn, "frameworm_inflight_requests") == 1
        finally:
            held_forward.release.set()
            assert running.result(WAIT_S).status_code == 200
    assert gauge(cnn, "frameworm_inflight_requests") == 0
