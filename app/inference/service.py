"""One inference, as the routes run it: decoding off the loop when large, the result cache,
then the batcher."""

from __future__ import annotations

import asyncio
import functools
import gc
import threading
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from fastapi import Request

from app.client_gone import forget_client_gone, on_client_gone
from app.config import Settings
from app.errors import Problem, request_id_of
from app.inference.batcher import DynamicBatcher
from app.inference.cache import CountingCache, MemoryCache, RedisCache, ResultCache, cache_key
from app.inference.codec import Decoded
from app.inference.pending import Served
from app.inference.runner import ModelRunner
from app.telemetry.metrics import Metrics
from app.telemetry.tracing import is_traced

P = ParamSpec("P")
T = TypeVar("T")


def build_cache(settings: Settings, metrics: Metrics | None) -> ResultCache | None:
    if settings.result_cache == "off":
        return None
    if settings.result_cache == "redis":
        if settings.redis_url is None:
            raise ValueError("FRAMEWORM_RESULT_CACHE=redis needs FRAMEWORM_REDIS_URL")
        inner: ResultCache = RedisCache(
            settings.redis_url.get_secret_value(),
            settings.result_cache_ttl_s,
            timeout_s=settings.result_cache_timeout_ms / 1000,
        )
    else:
        inner = MemoryCache(
            settings.result_cache_entries, settings.result_cache_max_mb * 1024 * 1024
        )
    return CountingCache(inner, metrics)


# Parsing JSON and building arrays holds the event loop for about 60 ms a MB; past this size a
# body is decoded on a worker thread, so probes and other requests are answered meanwhile. The
# usual tensor request (a few KB) stays inline, where a thread hop would cost more than it saves.
INLINE_DECODE_BYTES = 64 * 1024


async def off_the_loop_if_large(
    size: int, decode: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T:
    """`decode(*args)`, on a worker thread when the body is over INLINE_DECODE_BYTES."""
    if size > INLINE_DECODE_BYTES:
        return await asyncio.to_thread(
            _without_collections, functools.partial(decode, *args, **kwargs)
        )
    return decode(*args, **kwargs)


class _CollectionsPaused:
    """The cyclic collector off while any large body decodes (it is process-wide: counted).

    orjson holds the GIL for a whole parse, and each list it makes counts toward the next
    collection: a body of nested lists was collected again and again as it grew, 3.7 s of
    GIL for 3.9 million lists against 1.0 s without (a number costs the same either way). A
    parsed document holds no cycles; its lists are freed by their counts once decoded, which
    also takes them off the collector's count, so no collection is owed afterwards.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._was_enabled = True

    def __enter__(self) -> None:
        with self._lock:
            if self._holders == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._holders += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0 and self._was_enabled:
                gc.enable()


_COLLECTIONS_PAUSED = _CollectionsPaused()


def _without_collections(decode: Callable[[], T]) -> T:
    with _COLLECTIONS_PAUSED:
        return decode()


async def run_inference(
    request: Request,
    runner: ModelRunner,
    batcher: DynamicBatcher,
    decoded: Decoded,
    timeout_s: float,
    *,
    client_deadline: bool = False,
) -> Served:
    manifest = runner.manifest
    cache: ResultCache | None = request.state.cache
    key = None
    if cache is not None and manifest.deterministic and not decoded.random:
        key = cache_key(manifest, decoded.arrays, decoded.parameters)
        # The lookup checks the entry fits the request (outputs, dtypes, shapes): what it
        # returns is served, and counted as a hit, as it is.
        outputs = await cache.get(key, manifest.signature.outputs, decoded.items)
        if outputs is not None:
            _record_served(request, manifest.name, manifest.version)
            return Served(outputs, manifest.version)
    try:
        served = await batcher.submit(
            decoded.arrays,
            decoded.items,
            time.monotonic() + timeout_s,
            client_deadline=client_deadline,
            # The connection calls it when the client goes away (app/connection.py).
            on_abandon=functools.partial(on_client_gone, request.scope),
            request_id=request_id_of(request.scope),
            # 99 requests in 100 are not sampled: OpenTelemetry's context is not searched for
            # a span they do not have.
            traced=is_traced(request.scope),
        )
    except Problem as problem:
        if problem.version is not None:  # the model ran, and failed: the access line names it
            _record_served(request, manifest.name, problem.version)
        raise
    finally:
        forget_client_gone(request.scope)
    if cache is not None and key is not None and served.version == manifest.version:
        await cache.put(key, served.outputs)  # Redis writes in the background: no wait here
    _record_served(request, manifest.name, served.version)
    return served


def _record_served(request: Request, model: str, version: str) -> None:
    """For the access line: the model version that answered the request, or failed on it."""
    request.state.served_model, request.state.served_version = model, version
