from __future__ import annotations

import io
import json
import pickle
import zipfile
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from models.errors import ArtefactError, GoldenCheckError
from models.manifest import GoldenCheck, Signature, TensorSpec
from models.pt2_archive import refuse_pickled_entries
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


class _Touch:
    """Unpickled, creates `path` (harmless; shows that torch unpickled it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def pickled_touch(path: Path) -> bytes:
    payload = pickle.dumps(_Touch(path), protocol=2)
    return payload + b"\0" * (-len(payload) % 4)  # whole float32s, as a raw tensor's bytes


def add_entries(source: Path, target: Path, extra: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, src.read(item.filename))
        for name, data in extra.items():
            dst.writestr(name, data)
    return target


def constant_config(path_name: str, size: int, use_pickle: object = False) -> bytes:
    meta = {
        "dtype": 7,
        "sizes": [{"as_int": size // 4}],
        "requires_grad": False,
        "device": {"type": "cpu", "index": None},
        "strides": [{"as_int": 1}],
        "storage_offset": {"as_int": 0},
        "layout": 7,
    }
    entry = {"path_name": path_name, "is_param": False, "use_pickle": use_pickle}
    return json.dumps({"config": {"evil": {**entry, "tensor_meta": meta}}}).encode()


@pytest.mark.parametrize(
    "path_name",
    ["opaque_obj_d/p", "opaque_obj_0", "custom_obj_0", "tensor_0/../../weights/weight_0"],
)
def test_a_constant_that_torch_would_unpickle_by_its_path_name_is_refused(
    registry: ModelRegistry, tmp_path: Path, path_name: str
) -> None:
    # torch picks a constant's loader from its path_name: opaque_obj_* goes to pickle.loads
    # even with use_pickle false. The entry's own name is beside the point.
    sentinel = tmp_path / "unpickled"
    payload = pickled_touch(sentinel)
    good = export(tmp_path / "m.pt2", dynamic=True)
    edited = rewrite(
        good,
        tmp_path / "edited.pt2",
        {"model_constants_config.json": constant_config(path_name, len(payload))},
    )
    bad = add_entries(edited, tmp_path / "bad.pt2", {f"m/data/constants/{path_name}": payload})
    with pytest.raises(ArtefactError, match="refused"):
        registry.register("evil", "1.0.0", bad, format="torch_export", signature=TINY_SIGNATURE)
    assert not sentinel.exists()
    assert registry.list_models() == []


@pytest.mark.parametrize(
    "path_name", ["opaque_obj_0", "custom_obj_0", "../weights/weight_0", "weight_0", "tensor_"]
)
def test_a_payload_config_is_checked_for_the_path_names_it_gives(
    tmp_path: Path, path_name: str
) -> None:
    # Whatever the entries, torch loads what the config's path_name says, joined to the folder.
    good = export(tmp_path / "m.pt2", dynamic=True)
    bad = rewrite(
        good, tmp_path / "bad.pt2", {"model_constants_config.json": constant_config(path_name, 4)}
    )
    with pytest.raises(ArtefactError, match="path_name"):
        refuse_pickled_entries(bad.read_bytes())


def test_a_use_pickle_flag_that_is_truthy_but_not_true_is_refused(tmp_path: Path) -> None:
    good = export(tmp_path / "m.pt2", dynamic=True)
    bad = rewrite(
        good,
        tmp_path / "bad.pt2",
        {"model_constants_config.json": constant_config("tensor_0", 4, use_pickle="false")},
    )
    with pytest.raises(ArtefactError, match="pickled"):
        refuse_pickled_entries(bad.read_bytes())


def test_a_legacy_layout_beside_a_new_one_is_refused_and_never_unpickled(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    # torch.export.load retries any archive its new-format loader rejects as the legacy layout
    # (root-level `version`, pickled serialized_*.pt, loaded with weights_only=False).
    sentinel = tmp_path / "unpickled"
    payload = pickle.dumps(_Touch(sentinel), protocol=2)
    good = export(tmp_path / "m.pt2", dynamic=True)
    with zipfile.ZipFile(good) as archive:
        program = archive.read("m/models/model.json")
    bad = tmp_path / "bad.pt2"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("version", "8.0")
        archive.writestr("x/archive_format", "pt2")
        archive.writestr("serialized_exported_program.json", program)
        for name in ("state_dict", "constants", "example_inputs"):
            archive.writestr(f"serialized_{name}.pt", payload)
    with pytest.raises(ArtefactError, match="one folder"):
        registry.register("evil", "1.0.0", bad, format="torch_export", signature=TINY_SIGNATURE)
    assert not sentinel.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"stray": b""}, "one folder"),
        ({"other/archive_format": b"pt2"}, "one folder"),
        ({"m/data/aotinductor/model/model.so": b"\x7fELF"}, "aotinductor"),
        ({"m/data/weights/model.pt": b"\x80\x02"}, "model.pt"),
        ({"m/extra/notes.txt": b"hi"}, "extra"),
        ({"m/models/other.json": b"{}"}, "other.json"),
        ({"m/data/weights/Weight_0": b"\0" * 4}, "duplicate"),
        ({"m/data/weights/weight_0": b"\0" * 4}, "duplicate"),
    ],
    ids=[
        "root-level",
        "second-folder",
        "aoti",
        "legacy-weights",
        "extra",
        "second-program",
        "case-duplicate",
        "duplicate",
    ],
)
@pytest.mark.filterwarnings("ignore:Duplicate name")  # zipfile warns; that is the point
def test_entries_outside_the_exporters_layout_are_refused(
    tmp_path: Path, extra: dict[str, bytes], message: str
) -> None:
    good = export(tmp_path / "m.pt2", dynamic=True)
    bad = add_entries(good, tmp_path / "bad.pt2", extra)
    with pytest.raises(ArtefactError, match=message):
        refuse_pickled_entries(bad.read_bytes())


def test_an_exported_program_loads_without_torch_export_load(
    registry: ModelRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def legacy_fallback(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.export.load retries as the pickled legacy layout")

    monkeypatch.setattr(torch.export, "load", legacy_fallback)
    path = export(tmp_path / "m.pt2", dynamic=True)
    manifest = registry.register(
        "m", "1.0.0", path, format="torch_export", signature=TINY_SIGNATURE
    )
    [y] = registry.load(manifest).forward([torch.ones(2, 4)])
    torch.testing.assert_close(y, tiny_mlp(seed=3)(torch.ones(2, 4)))


class _Positive(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x > 0


def test_a_failing_golden_check_on_a_bool_output_is_said_in_a_line(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    """Its difference was computed by subtracting bools: a RuntimeError and a traceback."""
    program = torch.export.export(
        _Positive(), (torch.zeros(2, 4),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, str(tmp_path / "positive.pt2"))
    signature = Signature(
        inputs=(TensorSpec(name="x", shape=(-1, 4)),),
        outputs=(TensorSpec(name="y", dtype="bool", shape=(-1, 4)),),
    )
    check = GoldenCheck(name="g", inputs={"x": [[1, -1, 1, -1]]}, expected={"y": [[True] * 4]})
    with pytest.raises(GoldenCheckError, match="golden check 'g': output 'y' differs by up to 1"):
        registry.register(
            "positive",
            "1.0.0",
            tmp_path / "positive.pt2",
            format="torch_export",
            signature=signature,
            golden=(check,),
        )
