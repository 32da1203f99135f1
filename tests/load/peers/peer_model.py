"""What the LitServe and TorchServe peers load: a benchmark model and its registered weights.

The peers run from their own venvs (`tests/load/peers/setup.sh`: torch, numpy, safetensors and
the peer), so this imports nothing of the project but `models.families`, which needs only torch:
the module structure, and so the state-dict keys of the registered safetensors artefact, are
exactly Frameworm's. The family and its full config come from `tests/load/models.py`, passed by
bench.py (an environment variable or a JSON file), never repeated here.

The request and answer are Frameworm's `/infer` JSON: `{"inputs": {"x": [[784 floats], ...]}}`
in, `{"outputs": {"y": [[10 floats], ...]}}` out, one row per input row.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from models.families import build_model

# Set by bench.py's launchers: the family, its config as JSON, the safetensors file.
FAMILY_ENV = "FRAMEWORM_BENCH_FAMILY"
CONFIG_ENV = "FRAMEWORM_BENCH_CONFIG"
WEIGHTS_ENV = "FRAMEWORM_BENCH_WEIGHTS"


def one_thread() -> None:
    """Torch on one intra-op and one inter-op thread (the method of shared/BENCHMARK.md)."""
    torch.set_num_threads(1)
    # RuntimeError: already set, or inter-op work already started in this process.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def load_model(family: str, config: dict[str, Any], weights: str | Path) -> torch.nn.Module:
    """The benchmark model of `family`/`config` with the weights of the registered artefact."""
    module = build_model(family, dict(config))
    module.load_state_dict(load_file(str(weights)))
    return module.eval()


def load_from_env() -> torch.nn.Module:
    return load_model(
        os.environ[FAMILY_ENV], json.loads(os.environ[CONFIG_ENV]), os.environ[WEIGHTS_ENV]
    )


def rows(body: Any) -> list[list[float]]:
    """The input rows of one Frameworm `/infer` body (already parsed from JSON)."""
    x = body["inputs"]["x"]
    if not isinstance(x, list):
        raise ValueError("inputs.x must be a list of rows")
    return x


def tensor(rows: list[list[float]]) -> torch.Tensor:
    """Input rows as a float32 tensor (through numpy: about 3x faster than torch.tensor)."""
    return torch.from_numpy(np.asarray(rows, dtype=np.float32))


def answer(y: torch.Tensor) -> dict[str, dict[str, list[list[float]]]]:
    """Frameworm's `/infer` answer for one request's output rows."""
    return {"outputs": {"y": y.tolist()}}
