"""The served OpenAPI schema against the running server, fuzzed by schemathesis's CLI.

One server with the docs on (development only), auth on and a key in every request. The
checks are "not a server error" and "the response matches its documented schema"; the model
name is pinned so the model routes are reached, not just answered 404.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.hardened import HardenedServer, hardened_servers

KEY = "schemathesis-bootstrap-key-0123456789"
ST = str(Path(sys.executable).with_name("st"))
RUN_BOUND_S = 120


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HardenedServer]:
    config: dict[str, str | None] = {
        "FRAMEWORM_ENABLE_DOCS": "true",
        "FRAMEWORM_BOOTSTRAP_API_KEY": KEY,
        "FRAMEWORM_RATE_LIMIT": "100000/minute",
    }
    with hardened_servers(tmp_path_factory.mktemp("schema"), {"docs": config}) as servers:
        yield servers["docs"]


def test_the_fuzzed_api_never_answers_5xx_nor_contradicts_its_schema(
    server: HardenedServer, tmp_path: Path
) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text('[parameters]\n"path.name" = "cnn-digits"\n', encoding="utf-8")
    result = subprocess.run(  # our own fixed command line
        [
            ST,
            "--config-file",
            str(config),
            "run",
            f"{server.url}/openapi.json",
            "--header",
            f"X-API-Key: {KEY}",
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance",
            "--max-examples",
            "15",
            "--seed",
            "20240601",
            "--workers",
            "1",
            "--request-timeout",
            "15",
            "--generation-database",
            "none",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=RUN_BOUND_S,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    # Every documented operation, /metrics included (HEAD routes are not documented).
    assert "13 passed" in result.stdout or "Tested: 13" in result.stdout, result.stdout[-4000:]


def test_with_docs_on_the_schema_and_docs_are_served(server: HardenedServer) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.get("/openapi.json").status_code == 200
        assert client.get("/docs").status_code == 200


PROBLEM_STATUSES = {
    "/infer": {"post": ["401", "403", "413", "415", "422", "429", "503", "504"]},
    "/v2/models/{name}/infer": {"post": ["401", "403", "404", "413", "422", "429", "503"]},
}


def test_the_schema_declares_the_problem_responses_the_server_sends(
    server: HardenedServer,
) -> None:
    document = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    for path, operations in PROBLEM_STATUSES.items():
        for method, statuses in operations.items():
            responses = document["paths"][path][method]["responses"]
            for status in statuses:
                assert status in responses, (path, method, status)
                assert "application/problem+json" in responses[status]["content"]
