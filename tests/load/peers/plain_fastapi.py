"""Peer: the plain hand-written FastAPI endpoint of shared/BENCHMARK.md.

`async def`, a pydantic body, the model called once per request on the event loop, no batching,
no production layers. It speaks Frameworm's `/infer` JSON so the same wrk script and answer
check apply. Served from the project venv:

    FRAMEWORM_BENCH_MODEL=cnn FRAMEWORM_BENCH_WEIGHTS=<registry>/bench-cnn/1.0.0/model.safetensors \
        uvicorn tests.load.peers.plain_fastapi:app --host 127.0.0.1 --port 8000

The weights are the registered benchmark artefact, loaded with safetensors. The model runs on
FRAMEWORM_BENCH_DEVICE (`cpu` unless bench.py's `--device` says otherwise).
"""

from __future__ import annotations

import os

import torch
from fastapi import FastAPI
from pydantic import BaseModel
from safetensors.torch import load_file

from models.families import build_model
from tests.load.models import BENCH_MODELS


class InferBody(BaseModel):
    inputs: dict[str, list[list[float]]]


class InferAnswer(BaseModel):
    outputs: dict[str, list[list[float]]]


DEVICE = torch.device(os.environ.get("FRAMEWORM_BENCH_DEVICE", "cpu"))
# The same float32 math as Frameworm's default on CUDA (cuDNN would use TF32), so the answer
# check's 1e-4 applies to both.
torch.backends.cudnn.allow_tf32 = False


def _load() -> torch.nn.Module:
    threads = int(os.environ.get("FRAMEWORM_TORCH_THREADS", "1"))
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    spec = BENCH_MODELS[os.environ.get("FRAMEWORM_BENCH_MODEL", "cnn")]
    module = build_model(spec.family, dict(spec.config))
    module.load_state_dict(load_file(os.environ["FRAMEWORM_BENCH_WEIGHTS"]))
    return module.eval().to(DEVICE)


app = FastAPI()
model = _load()


@app.get("/readyz")
async def readyz() -> dict[str, str]:
    return {"status": "ready"}


@app.post("/infer")
async def infer(body: InferBody) -> InferAnswer:
    with torch.inference_mode():
        y = model(torch.tensor(body.inputs["x"], dtype=torch.float32, device=DEVICE))
    return InferAnswer(outputs={"y": y.tolist()})
