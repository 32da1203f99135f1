"""What an OTLP endpoint may be, checked by the settings and by `setup_tracing` alike.

Kept apart from the tracing module, which imports the OpenTelemetry SDK: the settings load in
every command, the CLI's included.
"""

from __future__ import annotations

from urllib.parse import urlsplit


def as_url(endpoint: str) -> str:
    """`endpoint` with `//` before a bare `host:port`, so the host and port read as such.

    urlsplit reads `collector:4318` as the scheme `collector` and the path `4318`, with no port
    (and `127.0.0.1:4318` as a path): 4318 would not choose HTTP.
    """
    return endpoint if "://" in endpoint else "//" + endpoint


def endpoint_problem(endpoint: str) -> str | None:
    """Why the exporters could not use `endpoint` as given, or None."""
    try:
        parts = urlsplit(as_url(endpoint))
        parts.port  # noqa: B018  # raises ValueError as the exporter would
    except ValueError:  # the exporter raised "Invalid IPv6 URL", naming nothing
        return "its host or port does not parse: write http://HOST:PORT"
    if not (parts.hostname or "").strip() and parts.scheme != "unix":
        return "it names no host: write http://HOST:PORT"
    if "@" in parts.netloc or "?" in endpoint or "#" in endpoint:  # an empty query too
        # The exporters dial a user:password@ host as a name and log it at each failure,
        # and the HTTP one put /v1/traces after a query. Credentials go in headers.
        return (
            "a user, password or query does not belong in it: give the collector's "
            "credentials as OTEL_EXPORTER_OTLP_HEADERS"
        )
    return None
