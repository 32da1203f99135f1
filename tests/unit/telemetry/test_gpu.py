"""GPU gauges: a fake NVML at the pynvml boundary, and silence where there is no driver."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import threading
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from app.telemetry.gpu import GpuSampler, load_nvml

GIB = 1024**3


@dataclass(frozen=True)
class Utilization:  # pynvml's c_nvmlUtilization_t: percentages
    gpu: int
    memory: int


@dataclass(frozen=True)
class Memory:  # pynvml's c_nvmlMemory_t: bytes
    total: int
    free: int
    used: int


class FakeNvml:
    """The five pynvml calls the sampler makes, over a fixed list of devices."""

    def __init__(self, devices: list[tuple[Utilization, Memory]]) -> None:
        self.devices = devices
        self.sampled = threading.Event()
        self.shut_down = False

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if not 0 <= index < len(self.devices):
            raise ValueError(f"no GPU {index}")
        return index

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Utilization:
        return self.devices[handle][0]

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Memory:
        self.sampled.set()
        return self.devices[handle][1]

    def nvmlShutdown(self) -> None:
        self.shut_down = True


def two_gpus() -> FakeNvml:
    return FakeNvml(
        [
            (Utilization(gpu=37, memory=10), Memory(total=80 * GIB, free=60 * GIB, used=20 * GIB)),
            (Utilization(gpu=100, memory=90), Memory(total=80 * GIB, free=0, used=80 * GIB)),
        ]
    )


def gauge(registry: CollectorRegistry, name: str, gpu: str) -> float | None:
    return registry.get_sample_value(name, {"gpu": gpu})


def test_a_sample_sets_utilization_and_memory_per_gpu() -> None:
    registry = CollectorRegistry()
    GpuSampler(registry, two_gpus()).sample()
    assert gauge(registry, "frameworm_gpu_utilization_ratio", "0") == pytest.approx(0.37)
    assert gauge(registry, "frameworm_gpu_utilization_ratio", "1") == 1.0
    assert gauge(registry, "frameworm_gpu_memory_used_bytes", "0") == 20 * GIB
    assert gauge(registry, "frameworm_gpu_memory_total_bytes", "1") == 80 * GIB
    assert gauge(registry, "frameworm_gpu_utilization_ratio", "2") is None


def test_the_sampler_thread_samples_until_stopped_then_shuts_nvml_down() -> None:
    registry = CollectorRegistry()
    nvml = two_gpus()
    sampler = GpuSampler(registry, nvml, interval_s=0.01)
    sampler.start()
    try:
        assert nvml.sampled.wait(5)
    finally:
        sampler.stop(timeout_s=5)
    assert nvml.shut_down
    assert gauge(registry, "frameworm_gpu_memory_used_bytes", "1") == 80 * GIB


def test_a_failing_sample_is_logged_and_sampling_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    class FlakyNvml(FakeNvml):
        calls = 0

        def nvmlDeviceGetCount(self) -> int:
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("NVML_ERROR_GPU_IS_LOST")
            return super().nvmlDeviceGetCount()

    nvml = FlakyNvml(two_gpus().devices)
    sampler = GpuSampler(CollectorRegistry(), nvml, interval_s=0.01)
    with caplog.at_level("WARNING", logger="frameworm.gpu"):
        sampler.start()
        try:
            assert nvml.sampled.wait(5)
        finally:
            sampler.stop(timeout_s=5)
    assert "GPU sampling failed" in caplog.text


def test_stopping_survives_an_nvml_that_is_already_gone() -> None:
    class GoneNvml(FakeNvml):
        def nvmlShutdown(self) -> None:
            raise RuntimeError("NVML_ERROR_UNINITIALIZED")

    GpuSampler(CollectorRegistry(), GoneNvml([])).stop()


def test_load_nvml_initialises_pynvml_when_it_works(monkeypatch: pytest.MonkeyPatch) -> None:
    initialised: list[bool] = []
    module = types.ModuleType("pynvml")
    module.nvmlInit = lambda: initialised.append(True)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", module)
    assert load_nvml() is module
    assert initialised == [True]


def test_load_nvml_is_none_when_the_driver_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    class LibraryNotFoundError(Exception):  # as pynvml's NVMLError_LibraryNotFound
        pass

    def no_driver() -> None:
        raise LibraryNotFoundError("NVML Shared Library Not Found")

    module = types.ModuleType("pynvml")
    module.nvmlInit = no_driver  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", module)
    assert load_nvml() is None


def test_load_nvml_is_none_on_this_machine_without_an_nvidia_driver() -> None:
    if Path("/proc/driver/nvidia").exists() or shutil.which("nvidia-smi"):
        pytest.skip("this machine has an NVIDIA driver")
    assert load_nvml() is None


def test_a_reading_nvml_refuses_is_left_out_and_the_rest_still_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One failure ended the pass: a MIG GPU (utilization NotSupported) had no memory gauges
    either, a lost GPU froze every gauge, the healthy one's too, at its last value, and each
    interval logged a traceback."""

    class NotSupported(Exception):  # as pynvml's NVMLError_NotSupported
        pass

    class Mixed(FakeNvml):
        lost = False

        def nvmlDeviceGetUtilizationRates(self, handle: int) -> Utilization:
            if handle == 0:  # a MIG GPU
                raise NotSupported
            return super().nvmlDeviceGetUtilizationRates(handle)

        def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
            if index == 1 and self.lost:
                raise RuntimeError("NVML_ERROR_GPU_IS_LOST")
            return super().nvmlDeviceGetHandleByIndex(index)

    nvml = Mixed(two_gpus().devices)
    registry = CollectorRegistry()
    sampler = GpuSampler(registry, nvml)
    with caplog.at_level("WARNING", logger="frameworm.gpu"):
        sampler.sample()
        sampler.sample()
        assert gauge(registry, "frameworm_gpu_utilization_ratio", "0") is None
        assert gauge(registry, "frameworm_gpu_memory_used_bytes", "0") == 20 * GIB
        assert gauge(registry, "frameworm_gpu_utilization_ratio", "1") == 1.0
        nvml.lost = True
        sampler.sample()
        sampler.sample()
    assert gauge(registry, "frameworm_gpu_memory_used_bytes", "0") == 20 * GIB
    for name in ("utilization_ratio", "memory_used_bytes", "memory_total_bytes"):
        assert gauge(registry, f"frameworm_gpu_{name}", "1") is None  # gone, not frozen
    assert [r.getMessage() for r in caplog.records] == [
        "GPU 0: no utilization reading (NotSupported); left out while it fails",
        "GPU 1: no device reading (RuntimeError); left out while it fails",
    ]
    assert not any(r.exc_info for r in caplog.records)


ONE_WORKER = """
import sys
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from app.telemetry.gpu import GpuSampler
from tests.unit.telemetry.test_gpu import FakeNvml, two_gpus

class Refusing(FakeNvml):
    def nvmlDeviceGetUtilizationRates(self, handle: int):
        if sys.argv[1] == "refused":
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return super().nvmlDeviceGetUtilizationRates(handle)

GpuSampler(CollectorRegistry(), Refusing(two_gpus().devices)).sample()
shared = CollectorRegistry()
multiprocess.MultiProcessCollector(shared)
print(generate_latest(shared).decode())
"""


def test_with_several_workers_a_refused_reading_reads_nan_then_the_value_again(
    tmp_path: Path,
) -> None:
    """Workers share files that cannot drop a series: remove() only warned, and the gauge kept
    its last value for good. Each run below is a worker process sampling into the one directory;
    /metrics shows the newest reading of any of them."""

    def worker(reading: str) -> float:
        # prometheus_client picks its multiprocess values at import: a fresh interpreter.
        done = subprocess.run(
            [sys.executable, "-W", "error::UserWarning", "-c", ONE_WORKER, reading],
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        samples = {
            (sample.name, sample.labels["gpu"]): sample.value
            for family in text_string_to_metric_families(done.stdout)
            for sample in family.samples
        }
        assert samples[("frameworm_gpu_memory_used_bytes", "0")] == 20 * GIB  # still read
        return samples[("frameworm_gpu_utilization_ratio", "0")]

    assert worker("read") == pytest.approx(0.37)
    assert math.isnan(worker("refused"))  # not 0.37, frozen
    assert worker("read") == pytest.approx(0.37)
