"""Checks of setting values as the parts that use them read them: Redis URLs, rate limits."""

from __future__ import annotations

from urllib.parse import urlsplit


def redis_url_problem(url: str, schemes: tuple[str, ...] = ("redis", "rediss", "unix")) -> str:
    """What is wrong with a Redis URL ("" when nothing), checked as redis-py reads it, in words
    that quote nothing of it but its scheme: it may hold a password."""
    from redis.connection import parse_url

    from app.production.ratelimit import url_scheme

    scheme = url_scheme(url)
    if scheme.removesuffix("://") not in schemes:
        *others, last = (f"{s}://" for s in schemes)
        what = "it has no scheme" if scheme == "no scheme" else f"{scheme} is not supported"
        return f"{what}: use {', '.join(others)} or {last}"
    plain = url.replace("redis+unix://", "unix://", 1)  # the rate limiter's name for unix://
    try:
        parts = urlsplit(plain)
    except ValueError:  # its message may quote the URL
        return "it does not parse as a URL"
    try:
        parts.port  # noqa: B018  # raises ValueError when not a number from 0 to 65535
    except ValueError:
        return (
            "its port is not a number from 0 to 65535 (a password goes before the host: "
            "redis://:PASSWORD@HOST:PORT/DB)"
        )
    if parts.scheme == "unix" and not parts.path:
        return f"{scheme} needs a socket path ({scheme}/run/redis.sock)"
    if parts.scheme != "unix" and parts.path.strip("/") and not parts.path.strip("/").isdigit():
        return "its path is not a database number (/0)"
    try:
        parse_url(plain)  # type: ignore[no-untyped-call]
    except ValueError:
        return "redis-py cannot read its options (?db=N, ?socket_timeout=SECONDS, ...)"
    return ""


def limit_problem(text: str) -> str | None:
    """Why the rate limiter could not use `text`, or None."""
    from app.production.ratelimit import parse_limit  # as the rate limiter reads it

    try:
        parse_limit(text)
    except ValueError as exc:
        return str(exc)
    return None
