"""Every Python block of the production checklist, run unchanged against app.production.

The checklist is vendored byte for byte at tests/fixtures/production-checklist.md. The only
rewrites: `frameworm.production` -> `app.production`, and the tracing endpoint literal ->
a receiver this test runs on 127.0.0.1. Each block's body runs inside a function; blocks 3
and 5 are split at their "request handler" comment into setup and a handler that `return`s.
The names the checklist leaves undefined get the stand-ins below.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from app.production import HealthStatus, ValidationError, shutdown_tracing
from tests.support.otlp import SpanSink

ROOT = Path(__file__).resolve().parents[3]
CHECKLIST = ROOT / "tests" / "fixtures" / "production-checklist.md"
# sha256 of ../shared/seed/production-checklist.md when it was vendored.
CHECKLIST_SHA256 = "7146d24f19c8107408e0bbb0612d00a231a7ec51f634e8e75c857a7ef99b5add"
JAEGER = "'http://jaeger:4317'"


def snippets() -> list[str]:
    text = CHECKLIST.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 6, "the checklist's Python blocks changed; update this test"
    return [block.replace("frameworm.production", "app.production") for block in blocks]


def as_function(name: str, body: str, *, return_locals: bool = False) -> str:
    """The body as a function; `return_locals` lets the test inspect what it built."""
    trailer = "\nreturn locals()\n" if return_locals else ""
    return f"def {name}():\n" + textwrap.indent(body + trailer, "    ")


def split_handler(block: str, marker: str) -> tuple[str, str]:
    setup, found, handler = block.partition(marker)
    assert found, f"{marker!r} not found in the checklist block"
    return setup, found + handler


def define(source: str, namespace: dict[str, Any]) -> Any:
    exec(compile(source, str(CHECKLIST), "exec"), namespace)  # noqa: S102 - the checklist's code
    return namespace


def test_the_checklist_is_vendored_byte_for_byte() -> None:
    """The copy is pinned by hash, so a checkout without the seed beside it checks it too."""
    assert hashlib.sha256(CHECKLIST.read_bytes()).hexdigest() == CHECKLIST_SHA256
    seed = ROOT.parent / "shared" / "seed" / "production-checklist.md"
    if seed.exists():  # where the project's shared folder is beside it: still the same file
        assert seed.read_bytes() == CHECKLIST.read_bytes()


def test_health_checks_snippet_registers_working_checks() -> None:
    namespace = define(
        as_function("snippet", snippets()[0], return_locals=True),
        {
            # Stand-ins: the checklist uses these without defining or importing them.
            "HealthStatus": HealthStatus,
            "check_model_loaded": lambda: True,
            "check_db_connection": lambda: HealthStatus(True, "db reachable"),
        },
    )
    health = namespace["snippet"]()["health"]
    report = health.get_health_report()
    assert report["alive"] is True and report["ready"] is True
    assert report["readiness"]["database"]["message"] == "db reachable"
    assert set(report["liveness"]) == {"basic"}


def test_graceful_shutdown_snippet_runs_cleanup_when_the_process_gets_sigterm(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "cleanup.log"
    script = tmp_path / "service.py"
    standins = textwrap.dedent(
        f"""
        import threading

        MARKER = {str(marker)!r}

        def save_final_checkpoint():
            with open(MARKER, "a") as f:
                f.write("checkpoint\\n")

        def close_database_connections():
            with open(MARKER, "a") as f:
                f.write("closed\\n")
        """
    )
    runner = '\nsnippet()\nprint("ready", flush=True)\nthreading.Event().wait(60)\n'
    script.write_text(standins + "\n" + as_function("snippet", snippets()[1]) + runner)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        if process.stdout is not None:
            process.stdout.close()
    assert marker.read_text() == "checkpoint\nclosed\n"
    # The default SIGTERM action was chained after the cleanup: the process died of it.
    assert returncode == -signal.SIGTERM


def test_rate_limiting_snippet_answers_the_101st_request_with_429() -> None:
    setup, handler = split_handler(snippets()[2], "# In request handler")
    namespace = define(setup, {"user_id": "user-1"})
    define(as_function("handle", handler), namespace)
    answers = [namespace["handle"]() for _ in range(101)]
    assert answers[:100] == [None] * 100
    assert answers[100] == ({"error": "Rate limit exceeded"}, 429)


def test_request_validation_snippet_accepts_a_good_request_and_rejects_a_bad_one() -> None:
    source = as_function("snippet", snippets()[3], return_locals=True)
    good = define(source, {"request_data": {"image": b"\x89PNG" * 10, "batch_size": 32}})
    assert good["snippet"]()["validator"] is not None
    bad = define(source, {"request_data": {"image": b"x", "batch_size": 500}})
    with pytest.raises(ValidationError) as caught:
        bad["snippet"]()
    assert [e.field for e in caught.value.errors] == ["batch_size"]
    wrong_type = define(source, {"request_data": {"image": "text", "batch_size": True}})
    with pytest.raises(ValidationError) as caught:
        wrong_type["snippet"]()
    assert [e.field for e in caught.value.errors] == ["image", "batch_size"]


def test_security_snippet_verifies_the_created_key_and_refuses_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("FRAMEWORM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FRAMEWORM_API_KEYS_FILE", str(tmp_path / "keys" / "api-keys.json"))
    setup, handler = split_handler(snippets()[4], "# Verify in requests")
    request = SimpleNamespace(headers={})
    namespace = define(setup, {"request": request})
    define(as_function("handle", handler), namespace)
    api_key = namespace["api_key"]
    assert namespace["auth"].verify_key(api_key, user_id="user_id")
    request.headers["X-API-Key"] = api_key
    assert namespace["handle"]() is None
    request.headers["X-API-Key"] = api_key[:-2] + "zz"
    assert namespace["handle"]() == ({"error": "Unauthorized"}, 401)
    # The zero-argument APIKeyAuth() kept the key in the configured file, not in memory.
    assert api_key.split("_")[1] in (tmp_path / "keys" / "api-keys.json").read_text()


def test_tracing_snippet_returns_a_tracer_whose_spans_reach_the_collector(
    otlp_grpc_receiver: SpanSink,
) -> None:
    block = snippets()[5]
    assert JAEGER in block
    block = block.replace(JAEGER, repr(otlp_grpc_receiver.endpoint))
    tracer = define(as_function("snippet", block, return_locals=True), {})["snippet"]()["tracer"]
    with tracer.start_as_current_span("checklist-span"):
        pass
    assert shutdown_tracing(10.0)
    spans = otlp_grpc_receiver.wait_for(lambda spans: bool(spans))
    assert ("frameworm-api", "checklist-span") in [(s.service, s.name) for s in spans]
