"""Shared test support: free ports, required tools."""

from __future__ import annotations

import os
import shutil
import socket

import pytest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def require_executable(name: str) -> str:
    """The tool's path; skip when it is missing, but fail under CI, which must install it."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install it, as .ci/run does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path
