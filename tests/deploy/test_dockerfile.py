"""The Dockerfile: hadolint finds nothing, the image is built the way the deployment needs
(numeric non-root user, read-only root, baked demo registry, exec-form entrypoint), and its
install steps work in a fresh virtual environment, offline."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import require_executable, skip_unless_ci

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
LOCAL_TORCH_WHEELS = Path("/opt/wheels")  # this machine's stand-in for the CPU torch index


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    pairs = [line.split(maxsplit=1) for line in lines if line and not line.startswith("#")]
    return [(pair[0].upper(), pair[1] if len(pair) > 1 else "") for pair in pairs]


def _arg_default(name: str) -> str:
    for instruction, args in _instructions():
        if instruction == "ARG" and args.startswith(f"{name}="):
            return str(shlex.split(args.split("=", 1)[1])[0]) if "=" in args else ""
    raise AssertionError(f"no ARG {name} with a default")


def _runtime_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    starts = [i for i, (instruction, _) in enumerate(instructions) if instruction == "FROM"]
    return instructions[starts[-1] :]


def _hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else require_executable("hadolint")


def test_hadolint_finds_nothing_to_report() -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_base_image_is_a_pinned_slim_python_3_11() -> None:
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", _arg_default("PYTHON_IMAGE"))
    froms = [args for instruction, args in _instructions() if instruction == "FROM"]
    assert len(froms) >= 2, "multi-stage"
    assert all(args.startswith("${PYTHON_IMAGE}") for args in froms)


def test_the_image_runs_as_a_numeric_non_root_user() -> None:
    users = [args for instruction, args in _runtime_stage() if instruction == "USER"]
    assert users == ["${APP_UID}:${APP_UID}"]
    uid = int(_arg_default("APP_UID"))
    assert uid >= 10000


def test_the_image_is_configured_for_production_on_all_interfaces() -> None:
    env = " ".join(args for instruction, args in _runtime_stage() if instruction == "ENV")
    for setting in ("FRAMEWORM_ENV=production", "FRAMEWORM_HOST=0.0.0.0"):
        assert setting in env
    assert "PEPPER=" not in env and "BOOTSTRAP_API_KEY=" not in env, "no secret in the image"


def test_the_demo_models_are_registered_at_build_time_as_the_runtime_user() -> None:
    stage = _runtime_stage()
    user_at = next(i for i, (instruction, _) in enumerate(stage) if instruction == "USER")
    seeds = [
        i
        for i, (instruction, args) in enumerate(stage)
        if instruction == "RUN" and "frameworm registry seed-demo" in args
    ]
    assert seeds and seeds[0] > user_at


def test_writable_paths_are_volumes_so_the_root_can_be_read_only() -> None:
    volumes = [args for instruction, args in _runtime_stage() if instruction == "VOLUME"]
    assert volumes == ['["/var/lib/frameworm", "/tmp"]']


def test_healthcheck_and_entrypoint_are_exec_form_without_curl() -> None:
    stage = dict(_runtime_stage())
    assert "/healthz" in stage["HEALTHCHECK"] and "urllib" in stage["HEALTHCHECK"]
    assert "curl" not in DOCKERFILE.read_text(encoding="utf-8")
    assert stage["ENTRYPOINT"] == '["frameworm"]'
    assert stage["CMD"] == '["serve"]'


def test_torch_comes_from_a_build_argument_index_before_the_project() -> None:
    assert _arg_default("TORCH_INDEX_URL") == "https://download.pytorch.org/whl/cpu"
    runs = [args for instruction, args in _instructions() if instruction == "RUN"]
    torch_at = next(i for i, r in enumerate(runs) if '"$TORCH_REQUIREMENT"' in r)
    project_at = next(i for i, r in enumerate(runs) if 'pip install --no-cache-dir ".[' in r)
    assert torch_at < project_at
    assert '--index-url "$TORCH_INDEX_URL"' in runs[torch_at]


def test_the_build_context_keeps_only_what_the_copies_need() -> None:
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert ignore[ignore.index("**")] == "**", "everything is excluded first"
    for source in _copied_paths():
        assert f"!{source}" in ignore or f"!{source}/" in ignore, source


def _copied_paths() -> list[str]:
    copies = [
        args
        for instruction, args in _instructions()
        if instruction == "COPY" and "--from" not in args
    ]
    return [source for args in copies for source in args.split()[:-1]]


def _project_spec() -> str:
    for instruction, args in _instructions():
        match = re.search(r'pip install --no-cache-dir "\.(\[[a-z0-9,-]+\])"', args)
        if instruction == "RUN" and match:
            return match.group(1)
    raise AssertionError("no project install step")


def _pip(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    environment["PIP_CONFIG_FILE"] = os.devnull  # no configured index: nothing is downloaded
    return subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env=environment,
    )


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv whose only packages are this project's environment, appended to its path:
    nothing is downloaded, and pip, setuptools and the dependencies (torch included) are the
    ones the project already resolved. What the Dockerfile installs is installed for real."""
    venv = tmp_path_factory.mktemp("image") / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    site = next((venv / "lib").glob("python3*/site-packages"))
    provided = next((Path(sys.prefix) / "lib").glob("python3*/site-packages"))
    (site / "zz-dependencies.pth").write_text(f"{provided}\n", encoding="utf-8")
    return venv


def test_the_torch_step_resolves_to_a_cpu_build(fresh_venv: Path) -> None:
    if not any(LOCAL_TORCH_WHEELS.glob("torch-*.whl")):
        # Machines like this one (CI's too) keep the CPU wheel there, standing in for the index.
        skip_unless_ci(f"no torch wheel in {LOCAL_TORCH_WHEELS} to stand in for the CPU index")
    requirement = _arg_default("TORCH_REQUIREMENT")
    result = _pip(
        fresh_venv,
        "install",
        "--dry-run",
        "--ignore-installed",
        "--no-deps",
        "--no-index",
        "--find-links",
        str(LOCAL_TORCH_WHEELS),
        requirement,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"Would install torch-[\d.]+\+cpu", result.stdout), result.stdout


def test_the_project_step_installs_the_console_script_from_the_copied_sources(
    fresh_venv: Path, tmp_path: Path
) -> None:
    context = tmp_path / "src"
    context.mkdir()
    for source in _copied_paths():
        path = ROOT / source
        assert path.exists(), f"the Dockerfile copies {source}, which does not exist"
        if path.is_dir():
            shutil.copytree(path, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, context / source)
    result = _pip(
        fresh_venv,
        "install",
        "--no-index",
        "--no-build-isolation",
        "--no-cache-dir",
        f"{context}{_project_spec()}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    script = fresh_venv / "bin" / "frameworm"
    assert script.exists()
    assert "app.cli" in script.read_text(encoding="utf-8")
