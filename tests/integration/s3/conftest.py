"""A moto S3 server for the package, a fresh bucket per test, boto3 pointed at it by env."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.s3 import S3Server, run_s3_server

# Variables that would point boto3 somewhere else than the test server.
FOREIGN_AWS_VARIABLES = (
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL_S3",
    "AWS_SESSION_TOKEN",
    "FRAMEWORM_S3_ENDPOINT_URL",
)


@pytest.fixture(scope="package")
def s3_server() -> Iterator[S3Server]:
    with run_s3_server() as server:
        yield server


@pytest.fixture
def s3_env(s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in FOREIGN_AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    env = s3_server.env(tmp_path / "cache")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def bucket(s3_server: S3Server, s3_env: dict[str, str]) -> str:
    return s3_server.new_bucket()


@pytest.fixture
def s3_url(bucket: str) -> str:
    return f"s3://{bucket}/team/registry"
