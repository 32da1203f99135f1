"""Large bodies are decoded on a worker thread, small ones inline on the event loop."""

from __future__ import annotations

import asyncio
import gc
import threading

from app.inference.service import INLINE_DECODE_BYTES, off_the_loop_if_large


def where(tag: str) -> tuple[str, str]:
    return tag, threading.current_thread().name


def test_a_small_body_is_decoded_inline_and_a_large_one_off_the_loop() -> None:
    async def main() -> list[tuple[str, str]]:
        return [
            await off_the_loop_if_large(INLINE_DECODE_BYTES, where, "small"),
            await off_the_loop_if_large(INLINE_DECODE_BYTES + 1, where, tag="large"),
        ]

    loop_thread = threading.current_thread().name  # asyncio.run runs the loop on this thread
    (small, on), (large, off) = asyncio.run(main())
    assert (small, on) == ("small", loop_thread)
    assert large == "large" and off != loop_thread


def test_a_large_decode_runs_without_the_cyclic_collector_and_gives_it_back() -> None:
    """orjson holds the GIL for a whole parse, and the collector ran again and again as a
    body of nested lists grew (3.7 s against 1.0 s for 3.9 million lists)."""
    started, release = threading.Event(), threading.Event()

    def held() -> bool:
        started.set()
        release.wait(5)
        return gc.isenabled()

    async def main() -> tuple[bool, bool, bool]:
        first = asyncio.create_task(off_the_loop_if_large(INLINE_DECODE_BYTES + 1, held))
        await asyncio.to_thread(started.wait, 5)
        # A second decode overlapping the first, ending before it: still paused after.
        second = await off_the_loop_if_large(INLINE_DECODE_BYTES + 1, gc.isenabled)
        after_second = gc.isenabled()
        release.set()
        return await first, second, after_second

    assert gc.isenabled()
    first, second, after_second = asyncio.run(main())
    assert (first, second, after_second) == (False, False, False)
    assert gc.isenabled()  # given back once the last decode ended
    assert asyncio.run(off_the_loop_if_large(INLINE_DECODE_BYTES, gc.isenabled))  # inline: on


def test_a_collector_turned_off_before_stays_off() -> None:
    gc.disable()
    try:
        asyncio.run(off_the_loop_if_large(INLINE_DECODE_BYTES + 1, gc.isenabled))
        assert not gc.isenabled()
    finally:
        gc.enable()
