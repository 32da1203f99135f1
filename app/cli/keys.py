"""`frameworm keys ...`: create, list and revoke API keys in the configured key store."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Annotated

import typer

from app.cli.output import JsonOption, emit, errors_as_one_line, fail
from app.config import Settings
from app.production import APIKeyAuth
from app.production.keys import MAX_EXPIRES_IN_S, build_key_store

keys_app = typer.Typer(help="API keys: shown once at creation, stored only as a keyed hash.")

_DURATION = re.compile(r"^([0-9]+)([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """ "90d", "12h", "30m", "45s" -> seconds, at most 100 years."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        fail(f"invalid duration {text!r}: use a number with s, m, h or d (e.g. 90d)")
    seconds = int(match.group(1)) * _SECONDS[match.group(2)]
    if not 0 < seconds <= MAX_EXPIRES_IN_S:
        fail(f"invalid duration {text!r}: must be above 0 and at most 100 years (36500d)")
    return seconds


def _when(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):  # past year 9999: a key from before the bound
        return f"{seconds:.0f} (unix time)"


@keys_app.command()
def create(
    owner: str,
    scope: Annotated[list[str] | None, typer.Option(help="infer (default) and/or admin.")] = None,
    expires_in: Annotated[str | None, typer.Option(help="e.g. 90d, 12h.")] = None,
    rate_limit: Annotated[str | None, typer.Option(help="Per-key limit, e.g. 1000/minute.")] = None,
    as_json: bool = JsonOption,
) -> None:
    """Create a key for OWNER and print it once; only its hash is stored."""
    with errors_as_one_line():
        auth = APIKeyAuth(settings=Settings())
        key = auth.create_key(
            owner,
            scopes=tuple(scope or ["infer"]),
            expires_in=parse_duration(expires_in) if expires_in else None,
            rate_limit=rate_limit,
        )
        key_id = key.split("_")[1]
        emit(
            {"id": key_id, "key": key, "owner": owner},
            as_json,
            lambda: f"{key}\n(key id {key_id}; store the key now, it is not shown again)",
        )


@keys_app.command("list")
def list_keys(as_json: bool = JsonOption) -> None:
    """Every key's id, owner, scopes and state (never the key)."""
    with errors_as_one_line():
        # The store alone: listing and revoking hash nothing, so they need no pepper (and
        # must work without the server's, to revoke a leaked key; nor make one up).
        records = build_key_store(Settings()).records()
        rows = [
            {
                "id": r.id,
                "owner": r.owner,
                "scopes": list(r.scopes),
                "created": _when(r.created),
                "expires": _when(r.expires),
                "revoked": _when(r.revoked),
                "expired": r.is_expired(),
                "rate_limit": r.rate_limit,
                # False for a limit the server cannot apply (edited by hand, or made by an
                # earlier version): the server refuses that key (401 invalid_limit).
                "rate_limit_usable": r.has_usable_limit(),
            }
            for r in records
        ]

        def human() -> str:
            if not rows:
                return "(no keys)"
            return "\n".join(
                f"{r.id}  {r.owner}  {','.join(r.scopes)}"
                + ("  revoked" if r.revoked else "")
                + ("  expired" if r.is_expired() else "")  # the server refuses it, as revoked
                + (f"  expires {_when(r.expires)}" if r.expires else "")
                + (f"  limit {r.rate_limit}" if r.rate_limit is not None else "")
                + ("" if r.has_usable_limit() else " (unusable: the server refuses this key)")
                for r in records
            )

        emit(rows, as_json, human)


@keys_app.command()
def revoke(key_id: str) -> None:
    """Revoke a key by its id; running servers refuse it within seconds (at once with Redis)."""
    with errors_as_one_line():
        if not build_key_store(Settings()).revoke(key_id, time.time()):
            fail(f"no key with id {key_id}")
        typer.echo(f"revoked {key_id}")
