"""Prometheus metrics: the HTTP layer (instrumentator), inference, guards and model state.

Each app gets its own CollectorRegistry (tests build many apps; nothing global). With several
worker processes (`PROMETHEUS_MULTIPROC_DIR` set), values live in shared files and `/metrics`
aggregates them; gauges declare how (`multiprocess_mode`), and there are no Info metrics or
custom collectors, which that mode cannot carry. No label ever holds a user id, a key or any
other unbounded value. The series written for every request are tallied on the event loop and
flushed into their values before a scrape (app/telemetry/tally.py; with several workers, every
second too, so that another worker's scrape sees them).
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from app.telemetry.tally import HistogramTally, Tallies

if TYPE_CHECKING:
    from app.inference.runner import ModelRunner
    from models.manifest import ModelManifest

TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds; 0.5 is a bucket so "p99 > 500 ms" is exact.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    def __init__(self, model: str, registry: CollectorRegistry | None = None) -> None:
        self.model = model
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.tallies = Tallies()
        r = self.registry
        self.inference_duration = Histogram(
            "frameworm_inference_duration_seconds",
            "Forward pass time of one batch on the device.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "frameworm_queue_wait_seconds",
            "Time a request waited in the batcher before its batch ran.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "frameworm_batch_size", "Items per batch.", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "frameworm_queue_depth",
            "Items waiting in the batcher.",
            ["model"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self._queue_depth = self.tallies.gauge(self.queue_depth.labels(model))
        self.queue_capacity = Gauge(
            "frameworm_queue_capacity",
            "Items the batcher queue holds before shedding.",
            ["model"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.inflight = Gauge(
            "frameworm_inflight_requests",
            "Inference requests admitted and not yet answered.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self._inflight = self.tallies.gauge(self.inflight)
        self.model_info = Gauge(
            "frameworm_model_info",
            "The model version being served (1; 0 for one served before, with several workers).",
            ["model", "version", "stage", "device"],
            multiprocess_mode="livemax",  # a dead worker's last version is not served
            registry=r,
        )
        self._info_labels: tuple[str, str, str, str] | None = None
        self.model_ready = Gauge(
            "frameworm_model_ready",
            "1 when the model is loaded, warm and checked.",
            ["model"],
            multiprocess_mode="livemin",
            registry=r,
        )
        # Made at the first batch, as prometheus_client's children were (their _created says when).
        self._batch_size: HistogramTally | None = None
        self._queue_wait: HistogramTally | None = None
        self._inference_duration: dict[str, HistogramTally] = {}  # by version
        self.auth_failures = Counter(
            "frameworm_auth_failures", "Failed authentications by reason.", ["reason"], registry=r
        )
        self.rate_limited = Counter(
            "frameworm_rate_limited", "Requests refused by the rate limit.", registry=r
        )
        self.shed_requests = Counter(
            "frameworm_requests_shed",
            "Requests answered without running the model, by reason.",
            ["reason"],
            registry=r,
        )
        self.cache_requests = Counter(
            "frameworm_result_cache_requests",
            "Result cache lookups by result (hit, miss).",
            ["result"],
            registry=r,
        )
        self.model_switches = Counter(
            "frameworm_model_switches", "Model version switches.", ["model"], registry=r
        )
        self.model_rollbacks = Counter(
            "frameworm_model_rollbacks",
            "Automatic rollbacks to the previous version.",
            ["model"],
            registry=r,
        )
        self.model_load_failures = Counter(
            "frameworm_model_load_failures",
            "Versions that failed to load or check.",
            ["model"],
            registry=r,
        )

    # ------------------------------------------------------------ BatchObserver (observer.py)
    def queued(self, depth_items: int) -> None:
        self._queue_depth.value = depth_items

    def shed(self, reason: str) -> None:
        self.shed_requests.labels(reason).inc()

    def batch_done(
        self,
        runner: ModelRunner,
        items: int,
        seconds: float,
        waits: list[float],
        trace_ids: list[str | None] | None = None,
    ) -> None:
        # Exemplars (trace ids of sampled requests) reach scrapers that ask for OpenMetrics;
        # multiprocess mode cannot carry them and leaves them out.
        version = runner.manifest.version
        duration = self._inference_duration.get(version)
        if duration is None:
            child = self.inference_duration.labels(self.model, version)
            duration = self._inference_duration[version] = self.tallies.histogram(child)
        if self._batch_size is None or self._queue_wait is None:
            self._batch_size = self.tallies.histogram(self.batch_size.labels(self.model))
            self._queue_wait = self.tallies.histogram(self.queue_wait.labels(self.model))
        self._batch_size.observe(items)
        wait = self._queue_wait
        if not trace_ids or not any(trace_ids):
            duration.observe(seconds)
            for value in waits:
                wait.observe(value)
            return
        sampled = next(t for t in trace_ids if t is not None)
        duration.observe_with_exemplar(seconds, {"trace_id": sampled})
        for value, trace_id in zip(waits, trace_ids, strict=True):
            if trace_id:
                wait.observe_with_exemplar(value, {"trace_id": trace_id})
            else:
                wait.observe(value)

    def admitted(self, delta: int) -> None:
        self._inflight.value += delta

    def flush(self) -> None:
        """Adds what the tallies hold to the series (on the event loop's thread)."""
        self.tallies.flush()

    # ------------------------------------------------------------------ model state
    def model_serving(self, manifest: ModelManifest | None, stage: str, device: str) -> None:
        labels = (manifest.name, manifest.version, stage, device) if manifest else None
        if self._info_labels is not None and self._info_labels != labels:
            if multiprocess_dir() is None:
                self.model_info.remove(*self._info_labels)
            else:  # the shared files cannot drop a series: the old version reads 0
                self.model_info.labels(*self._info_labels).set(0)
        if labels is not None:
            self.model_info.labels(*labels).set(1)
        self._info_labels = labels
        self.model_ready.labels(self.model).set(1 if manifest is not None else 0)

    # ------------------------------------------------------------------ exposition
    def render(self, accept: str) -> tuple[bytes, str]:
        self.flush()
        directory = multiprocess_dir()
        registry = self.registry
        if directory is not None:
            registry = CollectorRegistry()
            prometheus_multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        if _asks_for_openmetrics(accept):
            return generate_openmetrics(registry), OPENMETRICS_TYPE  # type: ignore[no-untyped-call]
        return generate_latest(registry), TEXT_TYPE


# Ranges that cover Prometheus text, most specific first; the first the header names sets text's q.
_TEXT_RANGES = ("text/plain", "text/*", "*/*")


def _asks_for_openmetrics(accept: str) -> bool:
    """Whether an Accept header gets OpenMetrics rather than Prometheus text.

    It does when it names `application/openmetrics-text` with a q above 0 and at least the q
    of text/plain (or, where that is not named, of text/*, else of */*). Media types are matched
    without regard to case; q is 1 unless given, and a range whose q is not a number from 0 to
    1 is ignored. Anything else, no Accept at all included, gets text.
    """
    openmetrics = 0.0
    text: dict[str, float] = {}
    for media_range in accept.split(","):
        media_type, *params = (part.strip() for part in media_range.split(";"))
        media_type = media_type.lower()
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = math.nan
        if not 0 <= q <= 1:  # NaN too
            continue
        if media_type == "application/openmetrics-text":
            openmetrics = max(openmetrics, q)  # Prometheus lists one per version
        elif media_type in _TEXT_RANGES:
            text[media_type] = max(text.get(media_type, 0.0), q)
    text_q = next((text[kind] for kind in _TEXT_RANGES if kind in text), 0.0)
    return openmetrics > 0 and openmetrics >= text_q
