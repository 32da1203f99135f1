"""`frameworm`: the command line. One sub-command group per module."""

from __future__ import annotations

import os
import signal
from types import FrameType


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


# As PID 1 in a container with no init, a signal without a handler is ignored by the kernel:
# a SIGTERM during the seconds of imports and start-up would be lost, and the pod would run
# until its grace period ends and it is killed. Until the server installs its own handlers
# (the drain), SIGTERM exits. Anywhere else the default action does the same already.
if os.getpid() == 1:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)

import typer  # noqa: E402  # after the handler: these imports take seconds (torch)

from app.cli.keys import keys_app  # noqa: E402
from app.cli.registry import registry_app  # noqa: E402
from app.cli.registry_copies import pull, push  # noqa: E402
from app.cli.serve import serve  # noqa: E402
from app.cli.smoke import smoke  # noqa: E402

cli = typer.Typer(
    name="frameworm",
    help="Serve a registered PyTorch model behind a hardened HTTP API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
registry_app.command()(push)
registry_app.command()(pull)
cli.add_typer(registry_app, name="registry")
cli.add_typer(keys_app, name="keys")
cli.command()(serve)
cli.command()(smoke)


def main() -> None:
    cli()
