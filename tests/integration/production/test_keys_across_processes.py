"""The file key store shared by separate processes (the CLI and the server)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from app.production import APIKeyAuth, FileKeyStore
from tests.support import children

ROOT = Path(__file__).resolve().parents[3]
PEPPER = "p" * 32
CREATE = textwrap.dedent(
    """
    import sys
    from app.production import APIKeyAuth
    auth = APIKeyAuth()
    for i in range(int(sys.argv[1])):
        print(auth.create_key(f"{sys.argv[2]}-{i}"), flush=True)
    """
)


def run_cli(tmp_path: Path, count: int, owner: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FRAMEWORM_API_KEYS_FILE": str(tmp_path / "api-keys.json"),
        "FRAMEWORM_API_KEY_PEPPER": PEPPER,
    }
    return subprocess.Popen(
        [sys.executable, "-c", CREATE, str(count), owner],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )


def test_a_key_created_by_another_process_verifies_here(tmp_path: Path) -> None:
    server = APIKeyAuth(store=FileKeyStore(tmp_path / "api-keys.json", refresh_s=0), pepper=PEPPER)
    assert server.list_keys() == []
    with children() as started:
        started.append(run_cli(tmp_path, 1, "alice"))
        output, _ = started[0].communicate(timeout=60)
    (key,) = output.split()
    assert server.verify_key(key, user_id="alice-0")


def test_processes_writing_at_once_lose_no_keys(tmp_path: Path) -> None:
    with children() as writers:
        writers += [run_cli(tmp_path, 10, f"p{n}") for n in range(3)]
        keys = [key for w in writers for key in w.communicate(timeout=60)[0].split()]
        assert all(w.returncode == 0 for w in writers)
    reader = APIKeyAuth(store=FileKeyStore(tmp_path / "api-keys.json"), pepper=PEPPER)
    assert len(reader.list_keys()) == 30
    assert all(reader.verify_key(key) for key in keys)
