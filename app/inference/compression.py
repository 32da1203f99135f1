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
MAX_GZIP_MEMBERS = 16
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
    # A gzip body may be several members one after the other (RFC 1952 2.2; `cat a.gz b.gz`),
    # which decompress to their contents joined; a zlib stream is one. Each member hands the
    # rest of the body on as a copy (`unused_data`), so their number is bounded: 10 MB of empty
    # 20-byte members would otherwise hold the event loop for a minute and a half.
    members: list[bytes] = []
    produced = 0
    rest = body
    while True:
        if len(members) == MAX_GZIP_MEMBERS:
            raise Problem(
                "malformed-request", f"the body has more than {MAX_GZIP_MEMBERS} gzip members"
            )
        inflater = zlib.decompressobj(wbits)
        try:
            data = inflater.decompress(rest, max_bytes + 1 - produced)
        except zlib.error:
            raise Problem("malformed-request", f"the body is not valid {coding} data") from None
        produced += len(data)
        if produced > max_bytes:
            raise Problem(
                "payload-too-large",
                f"the body is larger than {max_bytes / (1024 * 1024):g} MB once decompressed",
            )
        members.append(data)
        rest = inflater.unused_data
        if not inflater.eof or (rest and wbits == zlib.MAX_WBITS):
            raise Problem("malformed-request", f"the body is not valid {coding} data")
        if not rest:
            return members[0] if len(members) == 1 else b"".join(members)


def _coding(content_encoding: str | None) -> str:
    """The codings, lower-cased (they are case-insensitive), without empty list elements
    (`gzip,` is `gzip`: RFC 9110 5.6.1), joined as `a, b`."""
    codings = (part.strip().lower() for part in (content_encoding or "").split(","))
    return ", ".join(coding for coding in codings if coding)
