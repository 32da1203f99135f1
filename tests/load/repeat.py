"""The result-cache workload: request bodies for wrk_repeat.lua, from seeded random inputs.

A share REPEAT of the requests repeat one of HOT inputs (round robin), the rest are unique
(wrk_repeat.lua makes each one from unique.json). With the defaults (64 hot inputs, 90%
repeats) a hot input comes back every 71 requests or so, so any result cache of more entries
than that (Frameworm's default is 10,000) keeps the whole hot set and about 90% of the requests
hit once each hot input has been seen; the unique 10% always miss and are computed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LUA_SCRIPT = Path(__file__).with_name("wrk_repeat.lua")
HOT_INPUTS = 64
REPEAT_FRACTION = 0.9
SEED = 20_240_901
MARKER = "@UNIQUE@"
UNIQUE_VALUES = 3  # the first values of unique.json, replaced per request by wrk_repeat.lua


@dataclass(frozen=True)
class WrkWorkload:
    """A wrk script and the environment it reads."""

    script: Path
    env: dict[str, str] = field(default_factory=dict)


def body_text(values: list[str]) -> str:
    """The /infer body for one flattened 28x28 input, values already formatted."""
    return '{"inputs": {"x": [[' + ", ".join(values) + "]]}}"


def inputs(count: int, seed: int = SEED) -> np.ndarray:
    """count seeded inputs in [0, 1) at 4 decimals, like an image's pixels; float32 (count, 784)."""
    rng = np.random.default_rng(seed)
    return np.round(rng.random((count, 784)), 4).astype(np.float32)


def write_bodies(directory: Path, hot: int = HOT_INPUTS, seed: int = SEED) -> Path:
    """hot-000.json ... and unique.json in directory/repeat-<hot>-<seed>/ (made once)."""
    out = directory / f"repeat-{hot}-{seed}"
    if (out / "unique.json").exists():
        return out
    tmp = directory / f".repeat-{hot}-{seed}-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    x = inputs(hot + 1, seed)
    for i in range(hot):
        (tmp / f"hot-{i:03d}.json").write_text(body_text([f"{v:.4f}" for v in x[i]]))
    rest = [f"{v:.4f}" for v in x[hot][UNIQUE_VALUES:]]
    (tmp / "unique.json").write_text(body_text([MARKER, *rest]))
    tmp.rename(out)
    return out


def workload(
    directory: Path, hot: int = HOT_INPUTS, repeat: float = REPEAT_FRACTION
) -> WrkWorkload:
    """wrk_repeat.lua over bodies written (once) under directory."""
    if hot < 1 or not 0 <= repeat <= 1:
        raise ValueError("the hot set needs >= 1 input and the repeat share is 0..1")
    bodies = write_bodies(directory, hot)
    return WrkWorkload(
        LUA_SCRIPT,
        {
            "FRAMEWORM_BENCH_BODIES": str(bodies),
            "FRAMEWORM_BENCH_HOT": str(hot),
            "FRAMEWORM_BENCH_REPEAT": repr(float(repeat)),
        },
    )


def unique_body(template: str, counter: int) -> str:
    """What wrk_repeat.lua sends as the unique request `counter` (for tests)."""
    c = counter % 1_000_000_000
    values = f"1.{c % 1000:03d}, 1.{c // 1000 % 1000:03d}, 1.{c // 1_000_000:03d}"
    return template.replace(MARKER, values)


def parse_body(text: str) -> np.ndarray:
    """A body's input as the server decodes it: float32 (1, 784)."""
    return np.asarray(json.loads(text)["inputs"]["x"], dtype=np.float32)
