"""How far a connection reads ahead of the request being answered (pipelined requests).

uvicorn parses every request of a read at once and resumes reading after each answer (and each
time an app reads its body): a client pipelining tiny requests had one 256 KB read become
14,000 queued requests, and each answer let another read in. The connection parses a read in
pieces, stops at `MAX_PIPELINED` requests waiting, and keeps the rest of the read unparsed,
with reading paused (`HeldFlow`) until the requests ahead are answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from uvicorn.protocols.http.flow_control import FlowControl

# Requests read ahead of the one being answered, per connection, and the piece of a read parsed
# at once: a client pipelining tiny requests had one read of 256 KB parsed into 14,000 of them,
# and each answer let another read in (memory grew by hundreds of MB in seconds).
MAX_PIPELINED = 32
FEED_BYTES = 16 * 1024


class HeldFlow(FlowControl):
    """uvicorn's flow control, but reading stays paused while read-ahead bytes wait unparsed:
    an app reading its body resumes reading (uvicorn's `receive`), which let the next read in
    behind them, and pipelined POSTs grew memory without end."""

    def __init__(self, transport: asyncio.Transport, held: Callable[[], bool]) -> None:
        super().__init__(transport)
        self._held = held

    def resume_reading(self) -> None:
        if not self._held():
            super().resume_reading()
