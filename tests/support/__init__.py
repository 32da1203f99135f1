"""Shared test support: free ports, required tools, child processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest


def free_port() -> int:
    with closed_port() as port:
        return port


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A port on which connections are refused for as long as this lasts: bound, never
    listened on. (A port from `free_port` may be handed to another test meanwhile, and a
    server of its started there: the tests run in two processes.)"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        yield port


def require_executable(name: str) -> str:
    """The tool's path; skip when it is missing, but fail under CI, which must install it."""
    path = shutil.which(name)
    if path is None:
        skip_unless_ci(f"{name} is not installed (apt-get install it, as .ci/run does)")
    return path


def skip_unless_ci(message: str) -> NoReturn:
    """Skip for something this machine lacks; under CI (CI=true), which must have it, fail."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@contextlib.contextmanager
def children() -> Iterator[list[subprocess.Popen[Any]]]:
    """Processes the block starts, appended to the list: killed by pid and reaped on the way
    out, whatever the outcome, so a failing or hung test leaves none running."""
    started: list[subprocess.Popen[Any]] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
            process.communicate()  # reaped, its pipes closed
