"""Request bodies sent compressed: `Content-Encoding: gzip` or `deflate` (tritonclient's
`request_compression_algorithm` sends either).

A compressed body passes the body-size limit on the wire, then may expand a thousandfold, so
the output is bounded while it is produced: past the same limit the request is 413, as any
large body is, and no more than the limit plus one byte is ever held.
"""

from __future__ import annotations

import zlib

from app.errors import Problem

# RFC 9110 8.4.1: "deflate" is the zlib format (RFC 1950), which is what zlib.compress writes.
_IDENTITY = ("", "identity")
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def is_identity(content_encoding: str | None) -> bool:
    """No content coding: the header is absent, empty or says `identity`."""
    return _coding(content_encoding) in _IDENTITY


def decompressed(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """The body as sent before its content coding; an identity or absent coding returns it."""
    coding = _coding(content_encoding)
    if coding in _IDENTITY:
        return body
    wbits = _WBITS.get(coding)
    if wbits is None:
        raise Problem(
            "unsupported-media-type",
            f"Content-Encoding {coding[:40]!r} is not supported; send gzip or deflate",
        )
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, max_bytes + 1)
    except zlib.error:
        raise Problem("malformed-request", f"the body is not valid {coding} data") from None
    if len(data) > max_bytes:
        raise Problem(
            "payload-too-large",
            f"the body is larger than {max_bytes / (1024 * 1024):g} MB once decompressed",
        )
    if not inflater.eof or inflater.unused_data:
        raise Problem("malformed-request", f"the body is not valid {coding} data")
    return data


def _coding(content_encoding: str | None) -> str:
    return (content_encoding or "").strip().lower()  # codings are case-insensitive
