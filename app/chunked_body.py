"""What a request body's chunked framing may cost the event loop (used by app/connection.py).

- Bytes that are not body, since the last that was: trailer fields (which httptools joins by
  copying, as it did header values) or one endless chunk-size line. Bounded like the head; a
  body in many small chunks resets the count at each chunk's data.
- Chunks: each is a Python call on the event loop, so 1-byte chunks at a few MB/s from one
  connection held it for seconds (and on after an early answer, while the rest of the body was
  read and dropped). What multiplies the cost is many calls for one piece read: a body arriving
  in small reads (a slow network, Content-Length or chunked) costs a call a read, as any read
  does, and is not counted. Past FREE_CHUNKS such extra calls, a body whose pieces bring under
  MIN_MEAN_CHUNK_BYTES of body per extra call is refused; a client streaming as it produces
  writes far larger chunks.
"""

from __future__ import annotations

from typing import Literal

# A body may come in small chunks (a client streaming as it produces), up to a point.
FREE_CHUNKS = 1024
MIN_MEAN_CHUNK_BYTES = 64

Excess = Literal["framing", "chunks"]


class ChunkedBodyBounds:
    """The open request body's framing and chunk counts."""

    def __init__(self, max_framing_bytes: int) -> None:
        self.max_framing_bytes = max_framing_bytes
        self.framing_bytes = 0
        self.chunks = 0  # body calls past the first of each piece, and those pieces' body bytes
        self.chunk_bytes = 0
        self._calls = 0  # body calls for the piece being parsed

    def new_body(self) -> None:
        self.framing_bytes = self.chunks = self.chunk_bytes = 0

    def new_piece(self) -> None:
        self._calls = 0

    def on_chunk(self) -> None:
        self._calls += 1

    def after_piece(self, piece_bytes: int, body_bytes: int) -> Excess | None:
        """A piece of the wire parsed inside a body, `body_bytes` of it body: what it crossed."""
        framing = piece_bytes - body_bytes
        self.framing_bytes = framing if body_bytes else self.framing_bytes + framing
        if self.framing_bytes > self.max_framing_bytes:
            return "framing"
        return self.after_calls(body_bytes)

    def after_calls(self, body_bytes: int) -> Excess | None:
        """The piece's body calls counted (alone for a piece where a head ended: the head's
        bytes are not the body's framing); "chunks" past the bound."""
        if self._calls > 1:
            self.chunks += self._calls - 1
            self.chunk_bytes += body_bytes
        if self.chunks > FREE_CHUNKS and self.chunk_bytes < self.chunks * MIN_MEAN_CHUNK_BYTES:
            return "chunks"
        return None
