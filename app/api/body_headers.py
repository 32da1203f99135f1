"""The headers that say how to read a request body, read the way a proxy in front reads them.

RFC 9110 5.3: a field sent on several lines means the lines joined with commas. So two
`Content-Encoding` lines (`gzip`, then `br`) are the list `gzip, br`, which a proxy or WAF in
front sees as such; reading only the first line decoded the body as plain gzip. A field that
holds one value (`Content-Type`, the v2 binary extension's header length) sent twice with
different values is malformed: which one a proxy acted on is unknown, so neither is used.
"""

from __future__ import annotations

from starlette.requests import Request

from app.errors import Problem


def media_type(request: Request) -> str:
    """The Content-Type without parameters, lower-cased; "" when absent."""
    value = single_value(request, "content-type") or ""
    return value.split(";", 1)[0].strip().lower()


def content_encoding(request: Request) -> str | None:
    """Every Content-Encoding line, joined; None when absent."""
    values = request.headers.getlist("content-encoding")
    return ", ".join(values) if values else None


def single_value(request: Request, name: str) -> str | None:
    """A one-value header: 400 when its lines disagree (the same value twice is that value)."""
    values = request.headers.getlist(name)
    if len(set(values)) > 1:
        raise Problem("malformed-request", f"the {name} header is sent more than once")
    return values[0] if values else None
