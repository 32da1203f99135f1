"""`frameworm serve`: the server, with every setting from FRAMEWORM_* or an option."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from app.cli.output import errors_as_one_line
from app.config import Settings


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [FRAMEWORM_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [FRAMEWORM_PORT].")] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Worker processes on one port, CPU serving [FRAMEWORM_WORKERS]."),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model name [FRAMEWORM_MODEL].")] = None,
    stage: Annotated[str | None, typer.Option(help="Stage alias [FRAMEWORM_STAGE].")] = None,
    version: Annotated[
        str | None,
        typer.Option("--model-version", help="Pinned version [FRAMEWORM_MODEL_VERSION]."),
    ] = None,
    registry: Annotated[str | None, typer.Option(help="Registry [FRAMEWORM_REGISTRY].")] = None,
    device: Annotated[
        str | None, typer.Option(help="auto | cpu | cuda[:N] [FRAMEWORM_DEVICE].")
    ] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="[FRAMEWORM_MAX_BATCH_SIZE]")] = None,
    max_batch_delay_ms: Annotated[
        float | None, typer.Option(help="[FRAMEWORM_MAX_BATCH_DELAY_MS]")
    ] = None,
) -> None:
    """Serve the model. Every FRAMEWORM_* setting applies; options override them."""
    overrides: dict[str, Any] = {
        "host": host,
        "port": port,
        "workers": workers,
        "model": model,
        "stage": stage,
        "model_version": version,
        "registry": registry,
        "device": device,
        "max_batch_size": max_batch_size,
        "max_batch_delay_ms": max_batch_delay_ms,
    }
    with errors_as_one_line():
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
        if settings.workers == 1:
            # The server owns this variable: several workers get a fresh directory of their
            # own; one worker none, or it would add an earlier process's files into /metrics
            # (its counts, a version no longer served). Before prometheus_client is imported,
            # which reads it once.
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        from app.serve import run

        code = run(settings)
    raise typer.Exit(code)
