"""The GPU check, for a machine with an NVIDIA GPU (run by hand; CI has none).

    python -m tests.gpu.check_cuda [--seconds 20]

1. Loads every demo model through the real registry and CUDA path and compares its outputs
   with the CPU's on the bundled digits (and the golden checks on the device).
2. Starts `frameworm serve` with FRAMEWORM_DEVICE=cuda, checks /readyz, sends load for a while
   and prints the NVML gauges from /metrics as they move.
3. Times the benchmark CNN alone on the device at batch 1 and 32, fp32 and fp16.
Prints one table per step; exits non-zero when a comparison fails.
"""

from __future__ import annotations

import argparse
import base64
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

from models.demo import seed_demo
from models.demo.catalog import sample_png
from models.families import build_model
from models.golden import run_golden_checks
from models.registry import ModelRegistry
from tests.support import free_port


def digits() -> torch.Tensor:
    images = [
        np.asarray(Image.open(io.BytesIO(sample_png(d))), dtype=np.float32) / 255 for d in range(10)
    ]
    return torch.from_numpy(np.stack(images)[:, None])


def compare_devices(registry: ModelRegistry) -> bool:
    ok = True
    print("| model | max abs diff cuda vs cpu | golden on cuda |")
    print("|---|---|---|")
    for name in ("cnn-digits", "vae-digits"):
        manifest = registry.resolve(name)
        cpu = registry.load(manifest, "cpu")
        gpu = registry.load(manifest, "cuda")
        inputs = [digits()]
        diffs = [
            (a - b.cpu()).abs().max().item()
            for a, b in zip(cpu.forward(inputs), gpu.forward(inputs), strict=True)
        ]
        try:
            run_golden_checks(gpu)
            golden = "pass"
        except Exception as exc:
            golden, ok = f"FAIL: {exc}", False
        ok = ok and max(diffs) < 1e-3
        print(f"| {name} | {max(diffs):.2e} | {golden} |")
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


def time_cnn() -> None:
    torch.manual_seed(0)
    print("| precision | batch | ms per batch | samples/s |")
    print("|---|---|---|---|")
    for dtype in (torch.float32, torch.float16):
        model = build_model("cnn", {}).eval().to("cuda", dtype)
        for batch in (1, 32):
            x = torch.zeros(batch, 784, device="cuda", dtype=dtype)
            with torch.inference_mode():
                for _ in range(20):
                    model(x)
                torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(200):
                    model(x)
                torch.cuda.synchronize()
            ms = (time.perf_counter() - start) / 200 * 1000
            print(f"| {dtype} | {batch} | {ms:.3f} | {batch / ms * 1000:,.0f} |")


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
    time_cnn()
    print(f"outputs match: {outputs_match}; GPU gauges seen: {gauges_moved}")
    return 0 if outputs_match and gauges_moved else 1


if __name__ == "__main__":
    sys.exit(main())
