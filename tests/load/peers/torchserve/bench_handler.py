"""Peer: the TorchServe handler of the benchmark models (shared/BENCHMARK.md's TorchServe row).

Packed into a .mar by bench.py's `torchserve` launcher (torch-model-archiver from
`.peers/torchserve`, made by `bash tests/load/peers/setup.sh`) with the registered safetensors
artefact as the serialized file and `bench-model.json` (the family and its config, from
`tests/load/models.py`) as an extra file. TorchServe batches (32 requests, 5 ms) and hands a
batch to `handle`, which runs the model once on all its rows. It speaks Frameworm's JSON:
`{"inputs": {"x": [[784 floats]]}}` in, `{"outputs": {"y": [[10 floats]]}}` out.

The worker finds `tests.load.peers.peer_model` (and `models.families`) on PYTHONPATH, which the
launcher sets to the repository; torch runs on one thread (OMP_NUM_THREADS=1 from the launcher,
and `torch.set_num_threads(1)` here). Logging is at warning, as for every server measured: here
for the worker, `log4j2.xml` beside this file for the frontend.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from tests.load.peers.peer_model import answer, load_model, one_thread, rows, tensor

MODEL_SPEC_FILE = "bench-model.json"  # {"family": ..., "config": {...}}

_model: torch.nn.Module | None = None


def _load(context: Any) -> torch.nn.Module:
    one_thread()
    # The worker logs each request at info; warnings only, like every server measured.
    logging.getLogger().setLevel(logging.WARNING)
    model_dir = Path(context.system_properties["model_dir"])
    spec = json.loads((model_dir / MODEL_SPEC_FILE).read_text())
    weights = model_dir / context.manifest["model"]["serializedFile"]
    return load_model(spec["family"], spec["config"], weights)


def _body(request: dict[str, Any]) -> Any:
    """One request's JSON body: TorchServe has parsed it when the content type is JSON."""
    body = request.get("body", request.get("data"))
    if isinstance(body, (bytes, bytearray)):
        return json.loads(body)
    return body


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[str] | None:
    """TorchServe's entry point: called once with data=None to initialise, then per batch."""
    global _model
    if _model is None:
        _model = _load(context)
    if data is None:
        return None
    inputs = [rows(_body(request)) for request in data]
    x = tensor([row for request in inputs for row in request])
    with torch.inference_mode():
        y = _model(x)
    answers = []
    for i, part in enumerate(torch.split(y, [len(request) for request in inputs])):
        context.set_response_content_type(i, "application/json")
        answers.append(json.dumps(answer(part)))
    return answers
