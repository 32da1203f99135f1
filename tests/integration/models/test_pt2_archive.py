"""A .pt2 archive is checked as torch reads it: through torch's own zip reader, with nested
archives, sample inputs and tensor sizes that cannot be made to cost far more than the upload."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from models.errors import ArtefactError
from models.pt2_archive import refuse_pickled_entries
from tests.integration.models.test_formats import export, pickled_touch, rewrite


def entries(data: bytes) -> tuple[list[zipfile.ZipInfo], dict[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
        return infos, {i.filename: archive.read(i.filename) for i in infos}


def stored(infos: list[zipfile.ZipInfo], contents: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for info in infos:
            archive.writestr(info.filename, contents[info.filename])
    return buffer.getvalue()


def test_one_file_holding_a_plain_archive_for_zipfile_and_a_pickled_one_for_torch_is_refused(
    tmp_path: Path,
) -> None:
    """zipfile shifts every offset when the central directory is not where the end record says;
    torch's reader (miniz) takes them as written. Laid out [entries B][directory B][entries A]
    [directory A][end record of B], zipfile read the plain A and passed it, and torch loaded
    B: weights stored pickled, unpickled with weights_only=False (code ran at registration,
    promotion and every server start)."""
    infos, plain = entries(export(tmp_path / "m.pt2", dynamic=True).read_bytes())
    [config_name] = [n for n in plain if n.endswith("model_weights_config.json")]
    config = json.loads(plain[config_name])
    fqn, meta = next(iter(config["config"].items()))
    weight_name = config_name.rsplit("/", 1)[0] + "/" + meta["path_name"]
    meta["use_pickle"] = True
    pickled_config = json.dumps(config).encode().ljust(len(plain[config_name]), b" ")
    payload = pickled_touch(tmp_path / "ran")
    assert len(pickled_config) == len(plain[config_name])
    assert len(payload) <= len(plain[weight_name]), fqn
    pickled = dict(plain, **{config_name: pickled_config})
    pickled[weight_name] = payload.ljust(len(plain[weight_name]), b"\0")

    def parts(data: bytes) -> tuple[bytes, bytes, bytes]:
        end = data.rindex(b"PK\x05\x06")
        size, offset = struct.unpack("<II", data[end + 12 : end + 20])
        return data[:offset], data[offset : offset + size], data[end:]

    torch_entries, torch_directory, torch_end = parts(stored(infos, pickled))
    plain_entries, plain_directory, _ = parts(stored(infos, plain))
    both = torch_entries + torch_directory + plain_entries + plain_directory + torch_end
    with zipfile.ZipFile(io.BytesIO(both)) as archive:  # what the checks used to see
        assert json.loads(archive.read(config_name))["config"][fqn]["use_pickle"] is False
    with pytest.raises(ArtefactError, match=r"central directory|reads differently to torch's"):
        refuse_pickled_entries(both)
    assert not (tmp_path / "ran").exists()


def test_an_archive_whose_directory_is_not_where_its_end_record_says_is_refused(
    tmp_path: Path,
) -> None:
    """Two directories could agree on every entry's place and size yet not on its compression:
    torch inflated a 1 MB entry that zipfile read as stored into 1 GB. zipfile shifts offsets
    by the bytes before the directory it finds; only an archive without such bytes passes."""
    good = export(tmp_path / "m.pt2", dynamic=True).read_bytes()
    refuse_pickled_entries(good)
    with pytest.raises(ArtefactError, match="data before its central directory"):
        refuse_pickled_entries(b"\0" * 64 + good)


class _Expanded(torch.nn.Module):
    mask: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mask", torch.ones(1, 4).expand(256, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask[0]


# torch.export.save warns of the expanded tensor's storage (it is stored as it is).
@pytest.mark.filterwarnings("ignore:No complete tensor found:UserWarning")
def test_an_exported_expanded_buffer_is_accepted(tmp_path: Path) -> None:
    """torch.export.save stores an expanded tensor's storage only (16 bytes for 1,024
    elements): a byte per element refused real exports."""
    program = torch.export.export(
        _Expanded(), (torch.zeros(2, 4),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, str(tmp_path / "expanded.pt2"))
    refuse_pickled_entries((tmp_path / "expanded.pt2").read_bytes())


def sample_inputs_saved(value: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def deflated(archive_bytes: bytes) -> bytes:
    infos, contents = entries(archive_bytes)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for info in infos:
            archive.writestr(info.filename, contents[info.filename], zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def shared_nesting(depth: int) -> object:
    value: object = torch.zeros(1)
    for _ in range(depth):
        value = [value, value]  # 2**depth leaves, depth + 1 objects
    return value


@pytest.mark.parametrize(
    ("sample_inputs", "refusal"),
    [
        # A zip of its own, read by torch.load: a deflated record inflated a thousandfold
        # (2 MB made 2 GB), past the outer archive's check.
        (deflated(sample_inputs_saved(((torch.zeros(2, 4),), {}))), "compressed entries"),
        # Shared containers: a 12 KB entry flattened into 2**depth leaves (minutes to hours).
        (sample_inputs_saved(((shared_nesting(20),), {})), "too large"),
        (sample_inputs_saved(((list(range(20_000)),), {})), "too large"),
    ],
    ids=["deflated", "shared", "many"],
)
def test_sample_inputs_that_cost_far_more_than_their_bytes_are_refused(
    tmp_path: Path, sample_inputs: bytes, refusal: str
) -> None:
    good = export(tmp_path / "m.pt2", dynamic=True)
    bad = rewrite(good, tmp_path / "bad.pt2", {"sample_inputs/model.pt": sample_inputs})
    with pytest.raises(ArtefactError, match=refusal):
        refuse_pickled_entries(bad.read_bytes())


def test_a_weight_whose_zero_strides_spread_its_bytes_over_terabytes_is_refused(
    tmp_path: Path,
) -> None:
    """Only empty entries were checked against their declared size: 4 bytes with strides 0
    declared a 10**12-element weight, which the channels-last copy materialised."""
    good = export(tmp_path / "m.pt2", dynamic=True)
    _, contents = entries(good.read_bytes())
    [name] = [n for n in contents if n.endswith("model_weights_config.json")]
    config = json.loads(contents[name])
    meta = next(iter(config["config"].values()))["tensor_meta"]
    meta["sizes"] = [{"as_int": 10**12}, {"as_int": 1}]
    meta["strides"] = [{"as_int": 0}, {"as_int": 0}]
    bad = rewrite(
        good, tmp_path / "bad.pt2", {"model_weights_config.json": json.dumps(config).encode()}
    )
    with pytest.raises(ArtefactError, match="fewer bytes than its size"):
        refuse_pickled_entries(bad.read_bytes())


def test_a_payload_config_nested_past_the_parser_s_depth_is_malformed(tmp_path: Path) -> None:
    """json.loads raised RecursionError, which escaped as no ArtefactError."""
    good = export(tmp_path / "m.pt2", dynamic=True)
    deep = b'{"config": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    bad = rewrite(good, tmp_path / "bad.pt2", {"model_weights_config.json": deep})
    with pytest.raises(ArtefactError, match="is malformed"):
        refuse_pickled_entries(bad.read_bytes())
