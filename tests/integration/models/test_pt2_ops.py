"""A torch.export program may call tensor math only: not files, printing or Python.

torch's loader resolves a node's target by name, so an archive with no pickle in it can still
call `aten.from_file` (the server's secrets, handed back as an output) or `torch.load`.
"""

from __future__ import annotations

import copy
import json
import operator
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from models.errors import ArtefactError
from models.pt2_ops import refuse_unsafe_ops
from models.registry import ModelRegistry
from tests.support.artefacts import TINY_SIGNATURE, tiny_mlp


def export_tiny(path: Path) -> Path:
    shapes = ({0: torch.export.Dim("batch")},)
    program = torch.export.export(tiny_mlp(seed=3), (torch.zeros(2, 4),), dynamic_shapes=shapes)
    torch.export.save(program, str(path))
    return path


def edit_program(source: Path, target: Path, edit: Any) -> Path:
    """Copy a .pt2 archive with its program JSON changed by `edit(document)`."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("models/model.json"):
                document = json.loads(data)
                edit(document)
                data = json.dumps(document).encode()
            dst.writestr(item, data)
    return target


def add_to_output(
    document: dict[str, Any], target: str, inputs: list[dict[str, Any]], node_name: str = "smuggled"
) -> None:
    """Append a node calling `target`, and make the program's output the last output plus it.
    (A higher-order operator's node is written without a name of its own, as torch does.)"""
    graph = document["graph_module"]["graph"]
    values = graph["tensor_values"]
    values["smuggled"] = copy.deepcopy(values["p_layers_2_bias"])
    values["answer"] = copy.deepcopy(values["linear_1"])
    graph["nodes"] += [
        {
            "target": target,
            "inputs": inputs,
            "outputs": [{"as_tensor": {"name": "smuggled"}}],
            "metadata": {},
            "name": node_name,
        },
        {
            "target": "torch.ops.aten.add.Tensor",
            "inputs": [
                {"name": "self", "arg": {"as_tensor": {"name": "linear_1"}}, "kind": 1},
                {"name": "other", "arg": {"as_tensor": {"name": "smuggled"}}, "kind": 1},
            ],
            "outputs": [{"as_tensor": {"name": "answer"}}],
            "metadata": {},
            "name": "answer",
        },
    ]
    graph["outputs"] = [{"as_tensor": {"name": "answer"}}]
    spec = document["graph_module"]["signature"]["output_specs"][0]
    spec["user_output"]["arg"]["as_tensor"]["name"] = "answer"


def test_a_program_reading_a_file_with_aten_from_file_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "pepper"
    secret.write_bytes(b"SECRETPEPPER")  # 12 bytes: three float32 values, one per output

    def read_the_secret(document: dict[str, Any]) -> None:
        add_to_output(
            document,
            "torch.ops.aten.from_file.default",
            [
                {"name": "filename", "arg": {"as_string": str(secret)}, "kind": 1},
                {"name": "shared", "arg": {"as_bool": False}, "kind": 1},
                {"name": "size", "arg": {"as_int": 3}, "kind": 1},
                {"name": "dtype", "arg": {"as_scalar_type": 7}, "kind": 2},
            ],
        )

    path = edit_program(export_tiny(tmp_path / "m.pt2"), tmp_path / "evil.pt2", read_the_secret)
    registry = ModelRegistry(tmp_path / "registry")
    with pytest.raises(ArtefactError, match=r"calls 'aten\.from_file\.default'.*not tensor math"):
        registry.register("evil", "1.0.0", path, format="torch_export", signature=TINY_SIGNATURE)
    assert registry.list_models() == []


@pytest.mark.parametrize("wrapper", ["wrap_with_set_grad_enabled", "wrap_with_autocast"])
def test_an_operator_handed_to_a_control_flow_wrapper_is_refused(
    tmp_path: Path, wrapper: str
) -> None:
    """The wrappers call the function they are handed: given aten.from_file, not a graph, the
    secret came back in the output while every node's own target passed."""
    secret = tmp_path / "pepper"
    secret.write_bytes(b"SECRETPEPPER")
    leading = (
        [{"as_bool": False}]
        if wrapper == "wrap_with_set_grad_enabled"
        else [{"as_string": "cpu"}, {"as_none": True}, {"as_bool": False}, {"as_none": True}]
    )

    def read_through_a_wrapper(document: dict[str, Any]) -> None:
        arguments = [
            *leading,
            {"as_operator": "torch.ops.aten.from_file.default"},
            {"as_string": str(secret)},
            {"as_bool": False},
            {"as_int": 3},
        ]
        inputs = [{"name": "", "arg": arg, "kind": 1} for arg in arguments]
        inputs.append({"name": "dtype", "arg": {"as_scalar_type": 7}, "kind": 2})
        add_to_output(document, f"torch.ops.higher_order.{wrapper}", inputs, node_name="")

    path = edit_program(
        export_tiny(tmp_path / "m.pt2"), tmp_path / "evil.pt2", read_through_a_wrapper
    )
    registry = ModelRegistry(tmp_path / "registry")
    with pytest.raises(ArtefactError, match=r"hands 'aten\.from_file\.default' to node"):
        registry.register("evil", "1.0.0", path, format="torch_export", signature=TINY_SIGNATURE)
    assert registry.list_models() == []


def test_a_function_handed_as_an_argument_is_refused_by_name() -> None:
    program = branching_program()
    node = next(n for n in program.graph_module.graph.nodes if n.op == "call_function")
    node.args = (*node.args, [torch.ops.aten.from_file.default])
    with pytest.raises(ArtefactError, match=r"hands 'aten\.from_file\.default' to node"):
        refuse_unsafe_ops(program)


def test_a_program_calling_torch_load_is_refused(tmp_path: Path) -> None:
    def unpickle_a_file(document: dict[str, Any]) -> None:
        add_to_output(
            document, "torch.load", [{"name": "f", "arg": {"as_string": "/x"}, "kind": 1}]
        )

    path = edit_program(export_tiny(tmp_path / "m.pt2"), tmp_path / "evil.pt2", unpickle_a_file)
    registry = ModelRegistry(tmp_path / "registry")
    # torch's own verifier refuses a plain callable at load; refused either way.
    with pytest.raises(ArtefactError, match="load"):
        registry.register("evil", "1.0.0", path, format="torch_export", signature=TINY_SIGNATURE)


class Branching(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.cond(
            x.sum() > 0, lambda t: t.relu() + 1, lambda t: t.sin() * 2, (x,)
        )
        return out


def branching_program() -> torch.export.ExportedProgram:
    shapes = ({0: torch.export.Dim("batch")},)
    return torch.export.export(Branching(), (torch.ones(2, 4),), dynamic_shapes=shapes)


def test_control_flow_and_size_arithmetic_pass() -> None:
    refuse_unsafe_ops(branching_program())


@pytest.mark.parametrize(
    "target",
    [torch.ops.aten._print.default, torch.ops.aten.from_file.default, print, torch.save],
)
def test_an_unsafe_call_inside_a_branch_is_refused(target: Any) -> None:
    program = branching_program()
    branches = [m for name, m in program.graph_module.named_modules() if name]
    node = next(n for n in branches[0].graph.nodes if n.op == "call_function")
    node.target = target
    with pytest.raises(ArtefactError, match="not tensor math"):
        refuse_unsafe_ops(program)


def test_an_operator_of_another_namespace_is_refused() -> None:
    program = branching_program()
    node = next(n for n in program.graph_module.graph.nodes if n.op == "call_function")
    node.target = torch.ops.profiler._record_function_enter_new.default
    with pytest.raises(ArtefactError, match="profiler"):
        refuse_unsafe_ops(program)


def test_a_size_expression_that_runs_code_is_refused_before_torch_evaluates_it(
    tmp_path: Path,
) -> None:
    """torch's loader evaluates each size expression's text with sympy.sympify: this one ran
    while the archive loaded, whatever was checked after."""
    marker = tmp_path / "ran"

    def run_code_on_load(document: dict[str, Any]) -> None:
        text = json.dumps(document)
        symbol = "Symbol('s77', positive=True, integer=True)"
        assert symbol in text, "the batch dimension's expression as torch 2.13 writes it"
        command = f"__import__('os').system('touch {marker}')"
        document.clear()
        document.update(json.loads(text.replace(symbol, command.replace("'", "\\u0027"))))

    path = edit_program(export_tiny(tmp_path / "m.pt2"), tmp_path / "evil.pt2", run_code_on_load)
    registry = ModelRegistry(tmp_path / "registry")
    with pytest.raises(ArtefactError, match="size expression that is not one"):
        registry.register("evil", "1.0.0", path, format="torch_export", signature=TINY_SIGNATURE)
    assert not marker.exists()


@pytest.mark.parametrize(
    "target",
    [
        operator.call,
        operator.methodcaller("system", "true"),
        operator.attrgetter("system"),
        torch.ops.aten.manual_seed.default,
        torch.ops.aten.seed.default,
    ],
    ids=["operator.call", "methodcaller", "attrgetter", "manual_seed", "seed"],
)
def test_python_reaching_any_object_and_global_state_ops_are_refused(target: Any) -> None:
    program = branching_program()
    node = next(n for n in program.graph_module.graph.nodes if n.op == "call_function")
    node.target = target
    with pytest.raises(ArtefactError, match="not tensor math"):
        refuse_unsafe_ops(program)


def test_guards_code_that_runs_a_command_is_refused_before_anything_runs(tmp_path: Path) -> None:
    """torch executes each of guards_code on every forward pass (and registration runs one)."""
    marker = tmp_path / "ran"

    def add_a_guard(document: dict[str, Any]) -> None:
        document["guards_code"] = [f"__import__('os').system('touch {marker}') == 0"]

    path = edit_program(export_tiny(tmp_path / "m.pt2"), tmp_path / "evil.pt2", add_a_guard)
    registry = ModelRegistry(tmp_path / "registry")
    with pytest.raises(ArtefactError, match="guards_code"):
        registry.register("evil", "1.0.0", path, format="torch_export", signature=TINY_SIGNATURE)
    assert not marker.exists()


def test_a_compressed_entry_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    """torch.export.save stores entries as they are; a deflated one inflated 1000x on load."""
    source = export_tiny(tmp_path / "m.pt2")
    target = tmp_path / "deflated.pt2"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for item in src.infolist():
            deflate = item.filename.endswith("models/model.json")
            dst.writestr(
                item.filename,
                src.read(item.filename),
                compress_type=zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED,
            )
    registry = ModelRegistry(tmp_path / "registry")
    with pytest.raises(ArtefactError, match="compressed entries"):
        registry.register("m", "1.0.0", target, format="torch_export", signature=TINY_SIGNATURE)


def test_an_empty_weight_entry_for_a_nonempty_tensor_is_refused(tmp_path: Path) -> None:
    """torch makes an empty entry zeros of the declared size: 12 KB allocated a gigabyte."""
    source = export_tiny(tmp_path / "m.pt2")
    target = tmp_path / "empty.pt2"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for item in src.infolist():
            data = b"" if item.filename.endswith("data/weights/weight_0") else src.read(item)
            dst.writestr(item, data)
    registry = ModelRegistry(tmp_path / "registry")
    with pytest.raises(ArtefactError, match="fewer bytes than its size"):
        registry.register("m", "1.0.0", target, format="torch_export", signature=TINY_SIGNATURE)


def test_a_parameter_path_that_breaks_out_of_generated_code_is_refused(tmp_path: Path) -> None:
    """torch wrote the path's last segment into forward as getattr(base, "SEGMENT"): a quote in
    it ran the rest as Python on every call, registration's included."""
    marker = tmp_path / "ran"
    evil = f'layers.0.w", getattr(__import__("os"),"system")("touch {marker}"))#'

    def rename(text: bytes) -> bytes:
        return text.replace(b'"layers.0.weight"', json.dumps(evil).encode())

    source = export_tiny(tmp_path / "m.pt2")
    target = tmp_path / "evil.pt2"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith(("models/model.json", "model_weights_config.json")):
                data = rename(data)
            dst.writestr(item, data)
    registry = ModelRegistry(tmp_path / "registry")
    with pytest.raises(ArtefactError, match="not a dotted path of identifiers"):
        registry.register("evil", "1.0.0", target, format="torch_export", signature=TINY_SIGNATURE)
    assert not marker.exists()


def test_a_get_attr_target_that_is_not_a_path_is_refused() -> None:
    program = branching_program()
    node = next(n for n in program.graph_module.graph.nodes if n.op == "get_attr")
    node.target = 'x", print("ran"))#'
    with pytest.raises(ArtefactError, match="not a dotted path"):
        refuse_unsafe_ops(program)
