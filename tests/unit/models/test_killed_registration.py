"""A registration killed (kill -9) while it wrote its artefact: what it left behind goes once the
version is registered after all, and registering other bytes says how to start over."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from models.errors import VersionExistsError
from models.registry import ModelRegistry
from tests.unit.models.conftest import Register

# Registers tiny 1.0.0 as the `register` fixture does (seed 1), killing itself with SIGKILL as
# it is about to make the artefact's bytes durable: no exception handler or finally runs.
KILLED_REGISTRATION = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path

    from models.registry import ModelRegistry
    from tests.support.artefacts import TINY_CONFIG, TINY_SIGNATURE, write_tiny_mlp

    fsync = os.fsync

    def fsync_or_die(fd):
        if ".model.safetensors." in os.readlink(f"/proc/self/fd/{fd}"):
            os.kill(os.getpid(), signal.SIGKILL)
        fsync(fd)

    os.fsync = fsync_or_die
    registry, work = ModelRegistry(sys.argv[1]), Path(sys.argv[2])
    artefact = write_tiny_mlp(work / "killed.safetensors", seed=1)
    registry.register(
        "tiny", "1.0.0", artefact, format="safetensors", family="mlp",
        family_config=TINY_CONFIG, signature=TINY_SIGNATURE,
    )
    """
)


@pytest.fixture
def killed(registry: ModelRegistry, tmp_path: Path) -> Path:
    """The version folder of tiny 1.0.0, whose registration was killed midway."""
    root = Path(registry.store.url)
    child = subprocess.run(
        [sys.executable, "-c", KILLED_REGISTRATION, str(root), str(tmp_path)],
        capture_output=True,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    folder = root / "tiny" / "1.0.0"
    assert leftovers(folder), "the killed registration left no temporary file"
    return folder


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*.tmp"))


def test_finishing_the_killed_registration_removes_its_temporary_file(
    registry: ModelRegistry, register: Register, killed: Path
) -> None:
    register("tiny", "1.0.0", seed=1)
    assert registry.index("tiny").versions == ["1.0.0"]
    assert leftovers(killed) == []


def test_registering_other_bytes_says_how_to_start_over_and_that_works(
    registry: ModelRegistry, register: Register, killed: Path
) -> None:
    with pytest.raises(VersionExistsError) as refused:
        register("tiny", "1.0.0", seed=2)
    # It may be another process's registration still running: its start says which.
    started = registry.manifest("tiny", "1.0.0").created
    assert str(refused.value).endswith(
        f"(not registered yet: a registration started {started:%Y-%m-%d %H:%M:%S} UTC stored "
        f"another sha256; unless it is still running, delete {killed}/ to start over, or "
        "register it as before)"
    )
    shutil.rmtree(killed)  # what the message says: the version was never registered
    manifest = register("tiny", "1.0.0", seed=2)
    assert registry.resolve("tiny", version="1.0.0") == manifest
    assert leftovers(killed) == []
