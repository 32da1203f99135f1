"""The benchmark's API key is an issued one: the server finds it in its key file and checks it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from app.config import Settings
from app.production import APIKeyAuth
from app.production.keys import AuthFailure, Principal
from tests.load import bench


def test_bench_key_authenticates_through_the_key_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "api-keys.json"
    bench.write_bench_key(keys_file)
    bench.write_bench_key(keys_file)  # a second workspace preparation keeps the one record
    settings = Settings(
        _env_file=None,
        api_keys_file=str(keys_file),
        api_key_pepper=bench.EVERYTHING_ON["FRAMEWORM_API_KEY_PEPPER"],
    )
    auth = APIKeyAuth(settings=settings)
    assert settings.bootstrap_api_key is None
    assert "FRAMEWORM_BOOTSTRAP_API_KEY" not in bench.EVERYTHING_ON

    principal = asyncio.run(auth.authenticate(bench.BENCH_KEY))
    assert isinstance(principal, Principal)
    assert (principal.key_id, principal.owner, principal.scopes) == (
        bench.BENCH_KEY_ID,
        "benchmark",
        ("infer",),
    )
    wrong = bench.BENCH_KEY[:-1] + ("x" if bench.BENCH_KEY[-1] != "x" else "y")
    refused = asyncio.run(auth.authenticate(wrong))
    assert isinstance(refused, AuthFailure) and refused.reason == "bad_secret"
    assert len(auth.store.records()) == 1
