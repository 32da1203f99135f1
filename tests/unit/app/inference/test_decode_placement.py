"""Large bodies are decoded on a worker thread, small ones inline on the event loop."""

from __future__ import annotations

import asyncio
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
