"""GPU gauges from NVML (pynvml), sampled off the request path; absent without an NVIDIA driver."""

from __future__ import annotations

import importlib
import logging
import math
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from app.telemetry.metrics import multiprocess_dir

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
    """Every `interval_s`, per GPU: utilization (0-1), memory used and total (bytes).

    With several workers each samples the same GPUs into the shared files, and `/metrics` shows
    the most recent reading of any worker. Those files cannot drop a series, so there a reading
    NVML refuses is written as NaN; the newest write wins, so it reads NaN while the reading
    fails and the value again once it comes back, whichever worker read last.
    """

    def __init__(self, registry: CollectorRegistry, nvml: Any, interval_s: float = 5.0) -> None:
        self.nvml = nvml
        self.interval_s = interval_s
        self.utilization = Gauge(
            "frameworm_gpu_utilization_ratio",
            "GPU busy fraction over NVML's last sample period.",
            ["gpu"],
            multiprocess_mode="mostrecent",
            registry=registry,
        )
        self.memory_used = Gauge(
            "frameworm_gpu_memory_used_bytes",
            "GPU memory in use.",
            ["gpu"],
            multiprocess_mode="mostrecent",
            registry=registry,
        )
        self.memory_total = Gauge(
            "frameworm_gpu_memory_total_bytes",
            "GPU memory in all.",
            ["gpu"],
            multiprocess_mode="mostrecent",
            registry=registry,
        )
        self._failures: set[tuple[str, str, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="frameworm-gpu", daemon=True)

    def sample(self) -> None:
        """Each reading on its own: one NVML refuses (a MIG GPU's utilization: NotSupported; a
        lost GPU: all of them) leaves its series out (NaN with several workers), and the rest
        are still read. One failure ended the whole pass, every gauge frozen at its last value,
        a traceback each time."""
        nvml = self.nvml
        for index in range(nvml.nvmlDeviceGetCount()):
            gpu = str(index)
            handle = self._read(gpu, "device", nvml.nvmlDeviceGetHandleByIndex, index)
            rates = memory = None
            if handle is not None:
                rates = self._read(gpu, "utilization", nvml.nvmlDeviceGetUtilizationRates, handle)
                memory = self._read(gpu, "memory", nvml.nvmlDeviceGetMemoryInfo, handle)
            _show(self.utilization, gpu, None if rates is None else rates.gpu / 100)
            _show(self.memory_used, gpu, None if memory is None else memory.used)
            _show(self.memory_total, gpu, None if memory is None else memory.total)

    def _read(self, gpu: str, what: str, call: Callable[[Any], Any], argument: Any) -> Any | None:
        try:
            return call(argument)
        except Exception as exc:  # pynvml's NVMLError_*
            failure = (gpu, what, type(exc).__name__)
            if failure not in self._failures:  # once each, not every interval
                self._failures.add(failure)
                log.warning("GPU %s: no %s reading (%s); left out while it fails", *failure)
            return None

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


def _show(gauge: Gauge, gpu: str, value: float | None) -> None:
    """The reading, or for a refused one no series (NaN with several workers)."""
    if value is not None:
        gauge.labels(gpu).set(value)
    elif multiprocess_dir() is None:
        gauge.remove(gpu)
    else:
        # remove() only warns there and leaves the last value in the shared file, frozen.
        # Not "max" across workers: NaN compares false, so the file read first would decide.
        gauge.labels(gpu).set(math.nan)
