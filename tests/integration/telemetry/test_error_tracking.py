"""A real server fault reaches a (local) Sentry endpoint, tagged and scrubbed.

The app runs in-process with auth on and Sentry's DSN pointing at an HTTP server in this test
that records envelope POSTs; the loaded model's forward pass is made to fail as a device fault
would, so the fault takes the whole real path: runner thread -> batcher -> problem handler ->
`_report` -> sentry-sdk's transport.
"""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sentry_sdk
import torch

from app.production import APIKeyAuth
from models.demo import seed_demo
from models.formats import LoadedModel
from models.registry import ModelRegistry
from tests.integration.app.apps import app_settings, running_app

PEPPER = "pepper-for-the-error-tracking-test-0123456789"
PIXEL = 0.4242424242  # the request body's values; must never reach Sentry
DEVICE_FAULT = "CUDA error: an illegal memory access was encountered"
ENVELOPE_WAIT_S = 10.0


@dataclass
class SentryInbox:
    """Envelopes POSTed to /api/<project>/envelope/, decompressed, in arrival order."""

    port: int = 0
    envelopes: list[bytes] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self.port}/1"

    def events(self, timeout_s: float = ENVELOPE_WAIT_S) -> list[dict[str, Any]]:
        """The error events received, once there is at least one."""
        with self.arrived:
            self.arrived.wait_for(lambda: bool(_events(self.envelopes)), timeout_s)
            return _events(self.envelopes)


def _events(envelopes: Sequence[bytes]) -> list[dict[str, Any]]:
    """Envelope lines: a header, then (item header, payload) pairs; keep the event payloads."""
    events = []
    for envelope in envelopes:
        lines = envelope.split(b"\n")[1:]
        for header, payload in zip(lines[::2], lines[1::2], strict=False):
            if json.loads(header).get("type") == "event":
                events.append(json.loads(payload))
    return events


def decompress(encoding: str | None, body: bytes) -> bytes:
    """sentry-sdk sends brotli when the module is installed, else gzip."""
    if encoding == "br":
        import brotli  # type: ignore[import-untyped]  # only where sentry-sdk found it

        decoded: bytes = brotli.decompress(body)
        return decoded
    return gzip.decompress(body) if encoding == "gzip" else body


@pytest.fixture
def sentry_inbox() -> Iterator[SentryInbox]:
    inbox = SentryInbox()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            body = decompress(self.headers.get("Content-Encoding"), body)
            with inbox.arrived:
                inbox.paths.append(self.path)
                inbox.envelopes.append(body)
                inbox.arrived.notify_all()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    inbox.port = server.server_address[1]
    try:
        yield inbox
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def sentry_client_closed() -> Iterator[None]:
    """sentry-sdk's client is process-global: close it and put the no-op one back after."""
    try:
        yield
    finally:
        sentry_sdk.get_client().close(timeout=2)
        sentry_sdk.get_global_scope().set_client(None)


def device_fault(self: LoadedModel, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    raise RuntimeError(DEVICE_FAULT)


def test_a_model_fault_reaches_sentry_tagged_and_without_secrets_or_body(
    sentry_inbox: SentryInbox,
    sentry_client_closed: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = tmp_path / "registry"
    seed_demo(ModelRegistry(registry))
    settings = app_settings(
        registry,
        model="cnn-digits",
        auth_enabled=True,
        api_keys_file=tmp_path / "api-keys.json",
        api_key_pepper=PEPPER,
        sentry_dsn=sentry_inbox.dsn,
    )
    key = APIKeyAuth(settings=settings).create_key("alice")
    body = {"inputs": {"image": [[[[PIXEL] * 28] * 28]]}}
    with running_app(settings) as client:  # warmed up on the healthy model
        monkeypatch.setattr(LoadedModel, "forward", device_fault)
        response = client.post(
            "/infer",
            json=body,
            headers={
                "x-api-key": key,
                "authorization": f"Bearer {key}",
                "cookie": f"session={key}",
                "x-request-id": "fault-1",
            },
        )
        assert response.status_code == 500
        assert DEVICE_FAULT not in response.text  # the client gets the generic body
        sentry_sdk.get_client().flush(timeout=5)
        (event,) = sentry_inbox.events()

    assert sentry_inbox.paths[0].startswith("/api/1/envelope/")
    assert event["tags"]["request_id"] == "fault-1"
    assert event["tags"]["model_version"] == "1.0.0"
    assert event["tags"]["model"] == "cnn-digits"
    (exception,) = event["exception"]["values"]
    assert (exception["type"], exception["value"]) == ("RuntimeError", DEVICE_FAULT)
    raw = b"".join(sentry_inbox.envelopes).decode()
    for secret in (key, key.split("_", 2)[2], PEPPER):
        assert secret not in raw
    assert str(PIXEL)[:6] not in raw  # no body, no tensor repr from a frame's locals
    assert "data" not in event.get("request", {})
