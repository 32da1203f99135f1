from __future__ import annotations

import io
import json
import zipfile
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from models.errors import ArtefactError
from models.formats import refuse_pickled_entries
from models.registry import ModelRegistry
from tests.support.artefacts import TINY_SIGNATURE, tiny_mlp


def export(path: Path, *, dynamic: bool) -> Path:
    module = tiny_mlp(seed=3)
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    program = torch.export.export(module, (torch.zeros(2, 4),), dynamic_shapes=shapes)
    torch.export.save(program, str(path))
    return path


def rewrite(source: Path, target: Path, edit: dict[str, bytes]) -> Path:
    """Copy a zip archive, replacing the entries whose names end with a key of `edit`."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            for suffix, replacement in edit.items():
                if item.filename.endswith(suffix):
                    data = replacement
            dst.writestr(item, data)
    return target


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry")


def test_a_torch_export_program_with_a_dynamic_batch_registers_and_serves(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    path = export(tmp_path / "m.pt2", dynamic=True)
    manifest = registry.register(
        "exported", "1.0.0", path, format="torch_export", signature=TINY_SIGNATURE
    )
    x = torch.randn(7, 4)
    [y] = registry.load(manifest).forward([x])
    torch.testing.assert_close(y, tiny_mlp(seed=3)(x))


def test_a_torch_export_program_with_a_fixed_batch_is_refused_with_the_reason(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    path = export(tmp_path / "m.pt2", dynamic=False)
    with pytest.raises(ArtefactError, match="fixed batch size"):
        registry.register(
            "exported", "1.0.0", path, format="torch_export", signature=TINY_SIGNATURE
        )
    assert registry.list_models() == []


def test_an_archive_with_pickled_weights_is_refused_before_torch_reads_it(tmp_path: Path) -> None:
    good = export(tmp_path / "m.pt2", dynamic=True)
    with zipfile.ZipFile(good) as archive:
        [name] = [n for n in archive.namelist() if n.endswith("model_weights_config.json")]
        config = json.loads(archive.read(name))
    first = next(iter(config["config"]))
    config["config"][first]["use_pickle"] = True
    bad = rewrite(
        good, tmp_path / "bad.pt2", {"model_weights_config.json": json.dumps(config).encode()}
    )
    with pytest.raises(ArtefactError, match="pickled"):
        refuse_pickled_entries(bad.read_bytes())


def test_sample_inputs_that_need_full_unpickling_are_refused(tmp_path: Path) -> None:
    good = export(tmp_path / "m.pt2", dynamic=True)
    payload = io.BytesIO()
    torch.save({"x": Fraction(1, 3)}, payload)  # not an allow-listed type: weights_only fails
    bad = rewrite(good, tmp_path / "bad.pt2", {"sample_inputs/model.pt": payload.getvalue()})
    with pytest.raises(ArtefactError, match="needs unpickling"):
        refuse_pickled_entries(bad.read_bytes())


def test_a_legacy_archive_and_a_non_zip_file_are_refused(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy.pt2"
    with zipfile.ZipFile(legacy, "w") as archive:
        archive.writestr("m/serialized_state_dict.pt", b"\x80\x04")
    with pytest.raises(ArtefactError, match="legacy"):
        refuse_pickled_entries(legacy.read_bytes())
    with pytest.raises(ArtefactError, match="not a zip"):
        refuse_pickled_entries(b"plain bytes")


def test_torchscript_is_refused_unless_registered_as_trusted(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    path = tmp_path / "m.pt"
    with pytest.warns(DeprecationWarning):
        traced = torch.jit.trace(tiny_mlp(seed=4), torch.zeros(1, 4))  # type: ignore[no-untyped-call]
        torch.jit.save(traced, str(path))
    with pytest.raises(ArtefactError, match="trusted"):
        registry.register("scripted", "1.0.0", path, format="torchscript", signature=TINY_SIGNATURE)
    with pytest.warns(DeprecationWarning):
        manifest = registry.register(
            "scripted", "1.0.0", path, format="torchscript", signature=TINY_SIGNATURE, trusted=True
        )
    assert manifest.trusted
