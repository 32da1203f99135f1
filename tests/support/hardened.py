"""Hardened `frameworm serve` processes for the security e2e tests.

Unlike `tests.support.server.serve`, stdout (the JSON log) and stderr (where a bootstrap key
is printed) go to separate files, auth is on, several servers of a module start side by side
(each start costs seconds of torch import, so they overlap), and the `frameworm keys` CLI runs
against the same key store as the server it is given.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from app.production import APIKeyAuth
from app.production.keystore import FileKeyStore, HashedFileKeyStore
from models.demo import sample_png
from tests.support import free_port
from tests.support.server import FRAMEWORM, ServerProcess, server_env

CLI_TIMEOUT_S = 180.0  # a loaded 2-CPU CI machine takes tens of seconds to import torch
# Several servers start at once on a shared CI machine: torch's import alone can take 30 s.
READY_TIMEOUT_S = 120.0
INHERITED_SETTINGS_DROPPED = (
    "FRAMEWORM_ENABLE_DOCS",
    "FRAMEWORM_METRICS_TOKEN",
    "FRAMEWORM_BOOTSTRAP_API_KEY",
    "FRAMEWORM_API_KEY_STORE",
    "FRAMEWORM_REDIS_URL",
    "FRAMEWORM_RATE_LIMIT",
    "FRAMEWORM_RATE_LIMIT_STORAGE",
)
# A pepper long enough for production mode; tests share it with the CLI they run.
TEST_PEPPER = "pepper-for-tests-only-" + "x" * 32
# How soon a server sees a change to its key file: it re-reads it at most this often.
KEY_FILE_REFRESH_S = HashedFileKeyStore("keys.json").refresh_s


@dataclass
class HardenedServer(ServerProcess):
    stderr_path: Path
    env: dict[str, str]

    def stdout(self) -> str:
        return self.logs()

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def keys(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`frameworm keys ARGS` against this server's key store."""
        return run_frameworm(["keys", *args], self.env)

    def add_key(self, owner: str, **options: Any) -> str:
        """A new key made in-process in this server's file store (no CLI start-up cost)."""
        store = FileKeyStore(self.env["FRAMEWORM_API_KEYS_FILE"])
        auth = APIKeyAuth(store=store, pepper=self.env["FRAMEWORM_API_KEY_PEPPER"])
        key = auth.create_key(owner, **options)
        _until_the_server_reads_keys_written_at(time.monotonic())
        return key

    def create_key(self, owner: str, *options: str) -> tuple[str, str]:
        """A new key through the CLI: (id, key)."""
        result = self.keys("create", owner, *options, "--json")
        assert result.returncode == 0, result.stderr
        created: dict[str, str] = json.loads(result.stdout)
        _until_the_server_reads_keys_written_at(time.monotonic())
        return created["id"], created["key"]


def _until_the_server_reads_keys_written_at(written: float) -> None:
    """A server that looked at its key file just before the write (`written`: when the write
    had ended) looks again only after KEY_FILE_REFRESH_S: until then the new key is unknown to
    it (401). A CLI that ran in under a second, and a key written in-process, were tested
    against the old file."""
    time.sleep(max(0.0, written + KEY_FILE_REFRESH_S + 0.05 - time.monotonic()))


def hardened_env(
    directory: Path, overrides: Mapping[str, str | None] | None = None
) -> dict[str, str]:
    """The environment of a server (and of the CLI beside it) rooted in `directory`;
    an override of None removes the variable."""
    env = server_env(directory / "registry", free_port())
    env.update(
        {
            "FRAMEWORM_AUTH_ENABLED": "true",
            "FRAMEWORM_API_KEYS_FILE": str(directory / "keys.json"),
            "FRAMEWORM_API_KEY_PEPPER": TEST_PEPPER,
            "FRAMEWORM_WARMUP": "false",
        }
    )
    for name in INHERITED_SETTINGS_DROPPED:
        env.pop(name, None)
    for name, value in (overrides or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def launch(directory: Path, env: Mapping[str, str]) -> HardenedServer:
    directory.mkdir(parents=True, exist_ok=True)
    port = int(env["FRAMEWORM_PORT"])
    stdout_path, stderr_path = directory / "stdout.log", directory / "stderr.log"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = subprocess.Popen([FRAMEWORM, "serve"], env=dict(env), stdout=out, stderr=err)
    return HardenedServer(process, port, stdout_path, stderr_path, dict(env))


Configs = Mapping[str, Mapping[str, str | None]]


@contextmanager
def starting_servers(root: Path, configs: Configs) -> Iterator[dict[str, HardenedServer]]:
    """Start one server per named config at once (not waiting); stop them all after."""
    with ExitStack() as stack:
        servers: dict[str, HardenedServer] = {}
        for name, overrides in configs.items():
            server = launch(root / name, hardened_env(root / name, overrides))
            stack.callback(server.terminate)
            servers[name] = server
        yield servers


def wait_all_ready(servers: Mapping[str, HardenedServer]) -> None:
    for server in servers.values():
        server.wait_ready(timeout_s=READY_TIMEOUT_S)


@contextmanager
def hardened_servers(root: Path, configs: Configs) -> Iterator[dict[str, HardenedServer]]:
    """`starting_servers`, yielding once every one of them is ready."""
    with starting_servers(root, configs) as servers:
        wait_all_ready(servers)
        yield servers


def run_frameworm(
    args: Sequence[str], env: Mapping[str, str], timeout_s: float = CLI_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # our own console script
        [FRAMEWORM, *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def model_work(client: httpx.Client, headers: Mapping[str, str] | None = None) -> float:
    """How many batches the model has run: frameworm_inference_duration_seconds_count."""
    response = client.get("/metrics", headers=dict(headers or {}))
    assert response.status_code == 200, response.text
    total = 0.0
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "frameworm_inference_duration_seconds_count":
                total += sample.value
    return total


def unique_address() -> dict[str, str]:
    """An X-Forwarded-For of its own (the server trusts 127.0.0.1 as a proxy), so each caller
    gets a fresh budget of authentication failures."""
    octets = uuid.uuid4().bytes[:3]
    return {"x-forwarded-for": "10." + ".".join(str(b) for b in octets)}


def digit_document(label: int = 3) -> dict[str, Any]:
    """A valid POST /infer body: one sample PNG of the demo CNN."""
    image = {"b64": base64.b64encode(sample_png(label)).decode(), "content_type": "image/png"}
    return {"inputs": {"image": image}}


def v2_document() -> dict[str, Any]:
    """A valid v2 infer body for cnn-digits (one zero image)."""
    return {
        "inputs": [
            {"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}
        ]
    }
