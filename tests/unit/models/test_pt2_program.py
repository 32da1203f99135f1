"""What of a torch.export program's JSON torch turns into code is checked before torch reads it."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest

from models.errors import ArtefactError
from models.pt2_program import refuse_code_in_program

# The input spec torch 2.13 writes for forward(x, y): ((x, y), {}).
IN_SPEC = json.dumps(
    [
        1,
        {
            "type": "builtins.tuple",
            "context": "null",
            "children_spec": [
                {
                    "type": "builtins.tuple",
                    "context": "null",
                    "children_spec": [
                        {"type": None, "context": None, "children_spec": []},
                        {"type": None, "context": None, "children_spec": []},
                    ],
                },
                {"type": "builtins.dict", "context": "[]", "children_spec": []},
            ],
        },
    ]
)


def program(
    guards: list[str] | None = None, names: list[Any] | None = None, in_spec: str = IN_SPEC
) -> bytes:
    signature = {"in_spec": in_spec, "forward_arg_names": names or ["x", "y"]}
    document = {
        "graph_module": {"module_call_graph": [{"fqn": "", "signature": signature}]},
        "guards_code": guards if guards is not None else [],
    }
    return json.dumps(document).encode()


def kwargs_spec(*keys: str) -> str:
    spec = json.loads(IN_SPEC)
    kwargs = spec[1]["children_spec"][1]
    kwargs["context"] = json.dumps(list(keys))
    kwargs["children_spec"] = [{"type": None, "context": None, "children_spec": []} for _ in keys]
    return json.dumps(spec)


def test_what_torch_export_writes_passes() -> None:
    refuse_code_in_program(program())
    refuse_code_in_program(program(in_spec=kwargs_spec("mask")))


SHARED = "L['x'].size()[0] == L['w'].size()[0]"


@pytest.mark.parametrize(
    "guards",
    [
        ["__import__('os').system('id') == 0"],
        [SHARED, "__import__('os').system('id') == 0"],
        [SHARED + " or __import__('os').system('id')"],
        [SHARED + "\n__import__('os')"],
        ["L['x'].size()[0] == L[__import__('os').system('id')].size()[0]"],
        ["L['x'].size()[0] == L['w'].size()[0].__class__"],
        ["L['x'].size()[\u0660] == L['w'].size()[0]"],  # an Arabic-Indic zero
        ["L['x'].size()[01] == L['w'].size()[0]"],
        [5],
    ],
)
def test_guards_code_beyond_comparing_input_sizes_is_refused(guards: list[Any]) -> None:
    """torch pastes each guard into source it executes on every forward pass."""
    with pytest.raises(ArtefactError, match="guards_code"):
        refuse_code_in_program(program(guards=guards))
    with pytest.raises(ArtefactError, match="guards_code"):
        refuse_code_in_program(json.dumps({"guards_code": SHARED}).encode())  # not a list


def test_the_guards_of_inputs_sharing_a_dimension_pass() -> None:
    """What torch.export writes for two inputs with one batch dimension (`x * w`): every such
    model was refused."""
    refuse_code_in_program(program(guards=[SHARED, "L['w'].size()[1] == L['z_2'].size()[1]"]))


@pytest.mark.parametrize(
    "names",
    [["x=__import__('os').system('id')"], ["x", "y); import os; (z"], ["class"], [5]],
)
def test_forward_arg_names_that_are_not_identifiers_are_refused(names: list[Any]) -> None:
    with pytest.raises(ArtefactError, match="not a Python identifier"):
        refuse_code_in_program(program(names=names))


def test_input_spec_keys_that_are_not_identifiers_are_refused() -> None:
    """A kwargs key is pasted into the generated forward as {'KEY': name}."""
    key = "a':__import__('os').system('id'),'b"
    with pytest.raises(ArtefactError, match="spec holds something other than"):
        refuse_code_in_program(program(in_spec=kwargs_spec(key)))


@pytest.mark.parametrize("raw", [b"{", b"[]", b"[" * 100_000])
def test_a_program_that_is_not_a_json_object_is_refused(raw: bytes) -> None:
    with pytest.raises(ArtefactError, match=r"not a JSON object|not JSON"):
        refuse_code_in_program(raw)


def test_an_input_spec_that_is_not_json_is_refused() -> None:
    with pytest.raises(ArtefactError, match="output spec is not JSON"):
        refuse_code_in_program(program(in_spec="[1, {"))


def node_named(name: str) -> bytes:
    graph = {"nodes": [{"name": "n", "inputs": [{"name": name, "arg": {}}]}]}
    return json.dumps({"graph_module": {"graph": graph}, "guards_code": []}).encode()


@pytest.mark.parametrize("name", ["x=__import__('os').system('id')", "a b", "class", 7])
def test_value_names_that_are_not_identifiers_are_refused(name: Any) -> None:
    """An input's name becomes a parameter of the generated forward: `x=...` ran on load."""
    with pytest.raises(ArtefactError, match="not a Python identifier"):
        refuse_code_in_program(node_named(name))


def test_value_table_keys_that_are_not_identifiers_are_refused() -> None:
    graph: dict[str, Any] = {"tensor_values": {"x=__import__('os')": {}}}
    document = {"graph_module": {"graph": graph}, "guards_code": []}
    with pytest.raises(ArtefactError, match="not a Python identifier"):
        refuse_code_in_program(json.dumps(document).encode())


ENUM_KEY = {"__enum__": True, "fqn": "os:environ", "name": "HOME"}
LEAF: dict[str, Any] = {"type": None, "context": None, "children_spec": []}


@pytest.mark.parametrize(
    "node",
    [
        {"type": "builtins.dict", "context": json.dumps([ENUM_KEY]), "children_spec": [LEAF]},
        {
            "type": "collections.defaultdict",
            "context": {"default_factory_module": "this", "default_factory_name": "x"},
            "children_spec": [LEAF],
        },
        {"type": "collections.OrderedDict", "context": "[]", "children_spec": []},
        {"type": "builtins.dict", "context": '["a-b"]', "children_spec": [LEAF]},
    ],
    ids=["enum-key", "defaultdict", "other-type", "odd-key"],
)
def test_specs_naming_modules_or_other_types_are_refused(node: dict[str, Any]) -> None:
    """torch's spec reader imports the module an enum key or a defaultdict names."""
    spec = json.dumps([1, node])
    for where in ("in_spec", "out_spec"):
        signature = {"in_spec": IN_SPEC, "out_spec": IN_SPEC, where: spec, "forward_arg_names": []}
        document = {
            "graph_module": {"module_call_graph": [{"fqn": "", "signature": signature}]},
            "guards_code": [],
        }
        with pytest.raises(ArtefactError, match="spec holds something other than"):
            refuse_code_in_program(json.dumps(document).encode())


def with_parameter(path: Any) -> bytes:
    spec = {"parameter": {"arg": {"name": "p"}, "parameter_name": path}}
    signature = {"input_specs": [spec], "output_specs": []}
    return json.dumps({"graph_module": {"signature": signature}, "guards_code": []}).encode()


def test_attribute_paths_of_identifiers_and_indices_pass() -> None:
    refuse_code_in_program(with_parameter("layers.0.weight"))


@pytest.mark.parametrize(
    "path",
    ['layers.0.w", getattr(__import__("os"),"system")("id"))#', "a..b", "", "a.class", 5],
)
def test_attribute_paths_torch_would_write_unescaped_are_refused(path: Any) -> None:
    """A segment that is not an identifier becomes getattr(base, "SEGMENT") in generated code."""
    with pytest.raises(ArtefactError, match="not a dotted path of identifiers"):
        refuse_code_in_program(with_parameter(path))


@pytest.mark.parametrize("depth", range(900, 1001, 20))
def test_a_program_nested_as_deep_as_json_allows_is_refused_or_passed_never_crashed(
    depth: int,
) -> None:
    inner = "[" * depth + "]" * depth
    raw = ('{"graph_module": {"graph": {"nodes": ' + inner + "}}}").encode()
    with contextlib.suppress(ArtefactError):  # refused is fine; a RecursionError is not
        refuse_code_in_program(raw)
