"""GPU gauges from NVML (pynvml), sampled off the request path; absent without an NVIDIA driver."""

from __future__ import annotations

import importlib
import logging
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

log = logging.getLogger("frameworm.gpu")


def load_nvml() -> Any | None:
    """The pynvml module with NVML initialised, or None where there is no usable driver."""
    try:
        nvml = importlib.import_module("pynvml")
        nvml.nvmlInit()
    except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded...
        log.debug("no NVIDIA GPU metrics: %s", type(exc).__name__)
        return None
    return nvml


class GpuSampler:
    """Every `interval_s`, per GPU: utilization (0-1), memory used and total (bytes)."""

    def __init__(self, registry: CollectorRegistry, nvml: Any, interval_s: float = 5.0) -> None:
        self.nvml = nvml
        self.interval_s = interval_s
        self.utilization = Gauge(
            "frameworm_gpu_utilization_ratio",
            "GPU busy fraction over NVML's last sample period.",
            ["gpu"],
            multiprocess_mode="max",
            registry=registry,
        )
        self.memory_used = Gauge(
            "frameworm_gpu_memory_used_bytes",
            "GPU memory in use.",
            ["gpu"],
            multiprocess_mode="max",
            registry=registry,
        )
        self.memory_total = Gauge(
            "frameworm_gpu_memory_total_bytes",
            "GPU memory in all.",
            ["gpu"],
            multiprocess_mode="max",
            registry=registry,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="frameworm-gpu", daemon=True)

    def sample(self) -> None:
        for index in range(self.nvml.nvmlDeviceGetCount()):
            handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
            rates = self.nvml.nvmlDeviceGetUtilizationRates(handle)
            memory = self.nvml.nvmlDeviceGetMemoryInfo(handle)
            gpu = str(index)
            self.utilization.labels(gpu).set(rates.gpu / 100)
            self.memory_used.labels(gpu).set(memory.used)
            self.memory_total.labels(gpu).set(memory.total)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        try:
            self.nvml.nvmlShutdown()
        except Exception:  # already shut down, or the driver went away
            log.debug("nvmlShutdown failed", exc_info=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:
                log.warning("GPU sampling failed", exc_info=True)
            self._stop.wait(self.interval_s)
