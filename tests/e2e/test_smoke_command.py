"""`frameworm smoke` against real `frameworm serve` processes; the first serves from S3."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from app.cli import cli
from tests.support.s3 import run_s3_server
from tests.support.server import ServerProcess, serve

KEY = "fw_e2e_smoke_key_0123456789abcdef"


def smoke(url: str, *args: str) -> tuple[int, str]:
    """The command in-process (the servers are real processes; the client needs no own one)."""
    result = CliRunner().invoke(cli, ["smoke", url, "--timeout", "5", *args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def s3_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with auth on whose registry is an S3 bucket filled by `registry seed-demo`."""
    directory = tmp_path_factory.mktemp("smoke-s3")
    with run_s3_server() as s3:
        env = s3.env(directory / "cache")
        bucket = s3.new_bucket()
        registry = f"s3://{bucket}/registry"
        seeded = CliRunner().invoke(
            cli, ["registry", "seed-demo"], env={**env, "FRAMEWORM_REGISTRY": registry}
        )
        assert seeded.exit_code == 0, seeded.output
        overrides = {
            **env,
            "FRAMEWORM_REGISTRY": registry,
            "FRAMEWORM_SEED_DEMO": "false",
            "FRAMEWORM_AUTH_ENABLED": "true",
            "FRAMEWORM_BOOTSTRAP_API_KEY": KEY,
            "FRAMEWORM_API_KEYS_FILE": str(directory / "api-keys.json"),
            "FRAMEWORM_DRAIN_DELAY_S": "3",
        }
        with serve(directory, env=overrides) as server:
            yield server


def test_smoke_passes_against_a_server_serving_from_s3(s3_served: ServerProcess) -> None:
    code, output = smoke(s3_served.url, "--api-key", KEY)
    assert code == 0, output
    assert output.count("PASS") == 6


def test_smoke_fails_naming_the_checks_a_wrong_key_breaks(s3_served: ServerProcess) -> None:
    code, output = smoke(s3_served.url, "--api-key", "fw_wrong")
    assert code == 1
    assert "smoke failed: model-metadata, inference" in output


def test_smoke_fails_naming_readyz_when_the_server_is_draining(s3_served: ServerProcess) -> None:
    # Last in the module: after SIGTERM readiness turns 503 at once while the drain delay
    # keeps everything else answering.
    os.kill(s3_served.pid, signal.SIGTERM)
    code, output = smoke(s3_served.url, "--api-key", KEY)
    assert code == 1
    assert "FAIL  readyz" in output
    assert "smoke failed: readyz" in output
