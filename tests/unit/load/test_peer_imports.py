"""The peers' handlers import the model families in venvs of their own (made by
tests/load/peers/setup.sh): torch, numpy and safetensors, and not what the server needs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
# What .peers/torchserve lacks: importing any of them there kills TorchServe's worker at load.
SERVER_ONLY = ("pydantic", "fastapi", "starlette", "uvicorn", "orjson", "prometheus_client")


def test_the_peer_model_loader_imports_without_the_servers_dependencies() -> None:
    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in SERVER_ONLY)
    code = f"import sys; {blocked}; import tests.load.peers.peer_model"
    result = subprocess.run(  # nosec B603  # this interpreter, fixed arguments
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
