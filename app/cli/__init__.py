"""`frameworm`: the command line. One sub-command group per module."""

from __future__ import annotations

import typer

from app.cli.keys import keys_app
from app.cli.registry import registry_app
from app.cli.serve import serve
from app.cli.smoke import smoke

cli = typer.Typer(
    name="frameworm",
    help="Serve a registered PyTorch model behind a hardened HTTP API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
cli.add_typer(registry_app, name="registry")
cli.add_typer(keys_app, name="keys")
cli.command()(serve)
cli.command()(smoke)


def main() -> None:
    cli()
