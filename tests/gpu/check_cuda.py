"""The GPU check, for a machine with an NVIDIA GPU (run by hand; CI has none).

    python -m tests.gpu.check_cuda [--seconds 20]

1. Loads the demo models through the real registry and CUDA path, with the server's default
   float32 math, and compares their outputs with the CPU's on the bundled digits; runs their
   golden checks on the device. The same comparison with TF32 allowed shows what
   FRAMEWORM_CUDA_TF32 would cost in accuracy.
2. Starts `frameworm serve` with FRAMEWORM_DEVICE=cuda, checks /readyz, sends load for a while
   and prints the NVML gauges from /metrics as they move.
3. Releases models loaded on the device after a startup-style heap freeze (a safetensors demo
   model and a .pt2 program, whose module holds reference cycles) and checks that every byte
   of their tensors is given back.
Prints one table per step; exits non-zero when a check fails. Timings: `python -m
tests.load.bench --device cuda` (the benchmark, with the model alone in float16, a CUDA graph
and torch.compile).
"""

from __future__ import annotations

import argparse
import base64
import gc
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from app.inference.runner import set_cuda_math
from models.demo import seed_demo
from models.demo.catalog import sample_png
from models.formats import LoadedModel
from models.golden import run_golden_checks
from models.registry import ModelRegistry
from models.tensors import example_inputs
from tests.support import free_port
from tests.support.models import MODEL, register_slow


def digits() -> torch.Tensor:
    images = [
        np.asarray(Image.open(io.BytesIO(sample_png(d))), dtype=np.float32) / 255 for d in range(10)
    ]
    return torch.from_numpy(np.stack(images)[:, None])


def max_difference(
    gpu: LoadedModel, inputs: list[torch.Tensor], expected: list[torch.Tensor], allow_tf32: bool
) -> float:
    set_cuda_math(allow_tf32=allow_tf32)
    outputs = gpu.forward(inputs)
    return max((a - b.cpu()).abs().max().item() for a, b in zip(expected, outputs, strict=True))


def compare_devices(registry: ModelRegistry) -> bool:
    ok = True
    print("| model | max abs diff cuda vs cpu | same with TF32 allowed | golden on cuda |")
    print("|---|---|---|---|")
    for name in ("cnn-digits", "vae-digits"):
        manifest = registry.resolve(name)
        cpu = registry.load(manifest, "cpu")
        gpu = registry.load(manifest, "cuda")
        inputs = [digits()]
        expected = cpu.forward(inputs)
        tf32 = max_difference(gpu, inputs, expected, allow_tf32=True)
        # The server's default, left set for the golden checks and what follows.
        strict = max_difference(gpu, inputs, expected, allow_tf32=False)
        try:
            run_golden_checks(gpu)
            golden = "pass"
        except Exception as exc:
            golden, ok = f"FAIL: {exc}", False
        ok = ok and strict < 1e-4
        print(f"| {name} | {strict:.2e} | {tf32:.2e} | {golden} |")
    return ok


def watch_gauges(root: Path, seconds: float) -> bool:
    port = free_port()
    env = dict(
        os.environ,
        FRAMEWORM_REGISTRY=str(root / "registry"),
        FRAMEWORM_PORT=str(port),
        FRAMEWORM_DEVICE="cuda",
        FRAMEWORM_AUTH_ENABLED="false",
        FRAMEWORM_RATE_LIMIT_ENABLED="false",
        FRAMEWORM_API_KEYS_FILE=str(root / "keys.json"),
        FRAMEWORM_DRAIN_DELAY_S="0",
    )
    server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"{base}/readyz", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            print("server never turned ready")
            return False
        body = json.dumps(
            {
                "inputs": {
                    "image": [{"b64": base64.b64encode(sample_png(d)).decode()} for d in range(10)]
                }
            }
        ).encode()
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                request = urllib.request.Request(
                    f"{base}/infer", body, {"content-type": "application/json"}
                )
                urllib.request.urlopen(request, timeout=10).read()

        threads = [threading.Thread(target=load, daemon=True) for _ in range(8)]
        for thread in threads:
            thread.start()
        seen = False
        print("| t (s) | gpu utilization | memory used (MiB) |")
        print("|---|---|---|")
        for tick in range(int(seconds // 2)):
            time.sleep(2)
            metrics = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
            util = [
                line
                for line in metrics.splitlines()
                if line.startswith("frameworm_gpu_utilization_ratio{")
            ]
            used = [
                line
                for line in metrics.splitlines()
                if line.startswith("frameworm_gpu_memory_used_bytes{")
            ]
            if util and used:
                seen = True
                mib = float(used[0].split()[-1]) / 2**20
                print(f"| {2 * (tick + 1)} | {util[0].split()[-1]} | {mib:.0f} |")
        stop.set()
        return seen
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


def release_frees_the_device(registry: ModelRegistry, root: Path) -> bool:
    """Each model's CUDA tensors are all gone once it is released, as after a rollout."""
    ok = True
    print("| model | format | MiB while loaded | bytes left after release |")
    print("|---|---|---|---|")
    register_slow(registry, "1.0.0", root, seed=0, size=4)  # a .pt2 program
    registry.promote(MODEL, "1.0.0", "production")
    for name in ("cnn-digits", MODEL):
        manifest = registry.resolve(name)
        gc.collect()
        baseline = torch.cuda.memory_allocated()
        model = registry.load(manifest, "cuda")
        model.forward(example_inputs(manifest.signature, 2))
        loaded = torch.cuda.memory_allocated() - baseline
        gc.freeze()  # as the server does once its first version is ready
        try:
            model.release()
            gc.collect()
            left = torch.cuda.memory_allocated() - baseline
        finally:
            gc.unfreeze()
        ok = ok and left == 0
        print(f"| {name} | {manifest.format} | {loaded / 2**20:.1f} | {left} |")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        registry = ModelRegistry(root / "registry")
        seed_demo(registry)
        outputs_match = compare_devices(registry)
        gauges_moved = watch_gauges(root, args.seconds)
        released = release_frees_the_device(registry, root)
    print(
        f"outputs match: {outputs_match}; GPU gauges seen: {gauges_moved}; "
        f"device memory released: {released}"
    )
    return 0 if outputs_match and gauges_moved and released else 1


if __name__ == "__main__":
    sys.exit(main())
