"""`frameworm smoke` against a small stand-in server whose answers each test chooses."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.cli.smoke import zeros_request

KEY = "fw_test_key"
METADATA = {
    "name": "cnn-digits",
    "versions": ["1.0.0"],
    "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 2, 2]}],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
}


@dataclass
class Behaviour:
    ready: bool = True
    auth: bool = True
    metrics: bytes = b"frameworm_model_ready 1\n"
    bodies: list[bytes] = field(default_factory=list)
    redirect_to: str | None = None  # every request answered 302 to this base URL
    keys_seen: list[str] = field(default_factory=list)


@dataclass
class Fake:
    url: str
    behaviour: Behaviour


class StandIn(BaseHTTPRequestHandler):
    """Answers like a frameworm server would, as `server.behaviour` says."""

    server: BehavedServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def answer(self, status: int, body: object) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def redirected(self) -> bool:
        behaviour = self.server.behaviour
        behaviour.keys_seen.extend(self.headers.get_all("x-api-key") or [])
        if behaviour.redirect_to is None:
            return False
        self.send_response(302)
        self.send_header("location", behaviour.redirect_to + self.path)
        self.send_header("content-length", "0")
        self.end_headers()
        return True

    def authorised(self) -> bool:
        if self.server.behaviour.auth and self.headers.get("x-api-key") != KEY:
            self.answer(401, {"detail": "a valid API key is required"})
            return False
        return True

    def do_GET(self) -> None:
        if self.redirected():
            return
        behaviour = self.server.behaviour
        if self.path == "/healthz":
            self.answer(200, {"status": "ok"})
        elif self.path == "/readyz":
            self.answer(200 if behaviour.ready else 503, {})
        elif self.path == "/metrics":
            self.answer(200, behaviour.metrics)
        elif self.path == "/v2/models/cnn-digits":
            if self.authorised():
                self.answer(200, METADATA)
        else:
            self.answer(404, {"detail": "this server does not serve that model"})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.redirected():
            return
        if self.path == "/v2/models/cnn-digits/infer" and self.authorised():
            self.server.behaviour.bodies.append(body)
            self.answer(200, {"outputs": [{"name": "probabilities", "data": [0.1] * 10}]})


class BehavedServer(ThreadingHTTPServer):
    behaviour: Behaviour


@pytest.fixture
def fake() -> Iterator[Fake]:
    yield from stand_in()


def stand_in() -> Generator[Fake, None, None]:
    server = BehavedServer(("127.0.0.1", 0), StandIn)
    server.behaviour = Behaviour()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Fake(f"http://127.0.0.1:{server.server_port}", server.behaviour)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def smoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["smoke", *args], env=env)
    return result.exit_code, result.output


def test_every_check_passes_against_a_healthy_server(fake: Fake) -> None:
    code, output = smoke(fake.url, "--api-key", KEY)
    assert code == 0, output
    assert [line.split()[:2] for line in output.splitlines()] == [
        ["PASS", "healthz"],
        ["PASS", "readyz"],
        ["PASS", "model-metadata"],
        ["PASS", "inference"],
        ["PASS", "metrics"],
        ["PASS", "auth-enforced"],
    ]
    sent = json.loads(fake.behaviour.bodies[0])
    assert sent["inputs"][0]["shape"] == [1, 1, 2, 2]
    assert sent["inputs"][0]["data"] == [0, 0, 0, 0]


def test_a_wrong_key_fails_naming_the_model_checks(fake: Fake) -> None:
    code, output = smoke(fake.url, "--api-key", "wrong")
    assert code == 1
    assert "error: smoke failed: model-metadata, inference" in output
    assert "FAIL  model-metadata  HTTP 401" in output


def test_a_server_that_is_not_ready_fails_naming_readyz(fake: Fake) -> None:
    fake.behaviour.ready = False
    code, output = smoke(fake.url, "--api-key", KEY)
    assert code == 1
    assert "error: smoke failed: readyz" in output


def test_auth_off_fails_unless_allowed(fake: Fake) -> None:
    fake.behaviour.auth = False
    code, output = smoke(fake.url)
    assert code == 1
    assert "error: smoke failed: auth-enforced" in output
    code, output = smoke(fake.url, "--allow-no-auth")
    assert code == 0, output
    assert "SKIP  auth-enforced" in output


def test_missing_metrics_series_fail_the_metrics_check(fake: Fake) -> None:
    fake.behaviour.metrics = b"python_info 1\n"
    code, output = smoke(fake.url, "--api-key", KEY)
    assert code == 1
    assert "error: smoke failed: metrics" in output


def test_the_key_may_come_from_a_mounted_file(fake: Fake, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n", encoding="utf-8")
    env = {"FRAMEWORM_BOOTSTRAP_API_KEY_FILE": str(key_file), "FRAMEWORM_BOOTSTRAP_API_KEY": ""}
    code, output = smoke(fake.url, "--json", env=env)
    assert code == 0, output
    assert json.loads(output.split("\nerror:")[0])["ok"] is True


def test_an_unknown_model_fails_the_metadata_check(fake: Fake) -> None:
    code, output = smoke(fake.url, "--api-key", KEY, "--model", "other")
    assert code == 1
    assert "this server does not serve that model" in output


def test_an_unreachable_server_fails_every_check(fake: Fake) -> None:
    code, output = smoke("http://127.0.0.1:1", "--timeout", "1")
    assert code == 1
    assert output.count("FAIL") == 6


def test_only_http_urls_are_accepted() -> None:
    code, output = smoke("file:///etc/passwd")
    assert code == 1
    assert "URL must be http:// or https://" in output


@pytest.mark.parametrize("host", ["host..example.com", "a" * 64 + ".example.com"])
def test_a_host_name_idna_cannot_encode_is_refused_in_one_line(host: str) -> None:
    """An empty or over-long label raised UnicodeError at the first request: 30 frames."""
    code, output = smoke(f"http://{host}/")
    assert code == 1
    assert "URL has no valid host name" in output and "Traceback" not in output


def test_zeros_request_sets_batch_one_and_bool_zeros() -> None:
    body = json.loads(
        zeros_request({"inputs": [{"name": "m", "datatype": "BOOL", "shape": [-1, 3]}]})
    )
    assert body == {
        "inputs": [{"name": "m", "datatype": "BOOL", "shape": [1, 3], "data": [False] * 3}]
    }


def test_a_port_that_does_not_speak_http_fails_every_check_in_one_line_each() -> None:
    # An SSH server's greeting is no HTTP status line: http.client raises BadStatusLine, which
    # is no OSError.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def greet() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            with connection:
                connection.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    thread = threading.Thread(target=greet, daemon=True)
    thread.start()
    try:
        result = CliRunner().invoke(cli, ["smoke", f"http://127.0.0.1:{port}", "--timeout", "2"])
    finally:
        listener.close()
        thread.join(timeout=5)
    assert isinstance(result.exception, SystemExit | None), repr(result.exception)
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert len(lines) == 7, lines
    assert all(line.startswith("FAIL") for line in lines[:6]), lines
    assert "FAIL  healthz         not an HTTP answer: BadStatusLine 'SSH-2.0-OpenSSH_9.6'" in lines
    assert lines[6].startswith("error: smoke failed: healthz, readyz")


def test_a_redirect_is_a_failed_check_and_the_key_never_follows_it(fake: Fake) -> None:
    """urllib followed it with the API key (and the metrics bearer), to any host, https to
    http included; a POST became a GET without its body."""
    elsewhere = stand_in()
    other = next(elsewhere)
    try:
        fake.behaviour.redirect_to = other.url
        code, output = smoke(fake.url, "--api-key", KEY)
    finally:
        elsewhere.close()
    assert code == 1
    assert "FAIL  model-metadata  HTTP 302" in output
    assert other.behaviour.keys_seen == []
    assert fake.behaviour.keys_seen and set(fake.behaviour.keys_seen) == {KEY}


@pytest.mark.parametrize("timeout", ["inf", "1e300"])
def test_a_timeout_past_an_hour_is_refused_in_one_line(fake: Fake, timeout: str) -> None:
    """inf was an OverflowError traceback."""
    code, output = smoke(fake.url, "--api-key", KEY, "--timeout", timeout)
    assert code == 2
    assert "Traceback" not in output and "--timeout" in output


def test_the_key_and_the_model_may_come_from_dotenv_as_the_server_reads_them(
    fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server, `registry` and `keys` read `.env`; smoke read the environment only: beside
    the server's own `.env` it failed with 401, then asked for the default model."""
    monkeypatch.chdir(tmp_path)
    empty = {"FRAMEWORM_BOOTSTRAP_API_KEY": "", "FRAMEWORM_MODEL": ""}
    (tmp_path / ".env").write_text(f"FRAMEWORM_BOOTSTRAP_API_KEY={KEY}\n")
    code, output = smoke(fake.url, env=empty)
    assert code == 0, output
    (tmp_path / ".env").write_text(f"FRAMEWORM_BOOTSTRAP_API_KEY={KEY}\nFRAMEWORM_MODEL=other\n")
    code, output = smoke(fake.url, env=empty)
    assert code == 1 and "this server does not serve that model" in output, output
    # In any case, as the settings read names (lower case was missed).
    (tmp_path / ".env").write_text(f"frameworm_bootstrap_api_key={KEY}\nframeworm_model=other\n")
    code, output = smoke(fake.url, env=empty)
    assert code == 1 and "this server does not serve that model" in output, output
