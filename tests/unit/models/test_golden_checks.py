"""Golden checks that would check nothing, or could not run, are refused when a version is
registered, in one line naming what is wrong; numbers JSON cannot hold are refused too."""

from __future__ import annotations

import pytest

from models.errors import ArtefactError, GoldenCheckError
from models.golden import golden_inputs
from models.manifest import GoldenCheck, ParameterSpec, Signature, TensorSpec
from models.registry import ModelRegistry
from tests.support.artefacts import TINY_SIGNATURE
from tests.unit.models.conftest import Register

Y = [[0.0, 0.0, 0.0]]
# The tiny MLP's signature, its input drawn from N(0, 1) with the check's batch_size and seed.
GENERATED = Signature(
    inputs=(TensorSpec(name="x", shape=(-1, 4), generate="standard_normal"),),
    outputs=TINY_SIGNATURE.outputs,
    parameters={
        "batch_size": ParameterSpec(type="int", minimum=1),
        "seed": ParameterSpec(type="int"),
    },
)


def assert_refused_before_anything_is_stored(
    registry: ModelRegistry, register: Register, message: str, **options: object
) -> None:
    with pytest.raises(ArtefactError) as refused:
        register("tiny", "1.0.0", **options)
    assert str(refused.value) == message
    assert registry.store.read("tiny/1.0.0/manifest.json") is None


@pytest.mark.parametrize(
    ("check", "message"),
    [
        (
            GoldenCheck(name="typo", inputs={"x": [[1, 2, 3, 4]]}, expected={"Y": [[9, 9, 9]]}),
            "golden check 'typo': the signature has no output 'Y' (its outputs: y)",
        ),
        (
            GoldenCheck(name="extra", inputs={"x": [[1, 2, 3, 4]], "xx": [1]}, expected={"y": Y}),
            "golden check 'extra': the signature has no input 'xx' (its inputs: x)",
        ),
        (
            GoldenCheck(name="empty", inputs={"x": [[1, 2, 3, 4]]}, expected={}),
            "golden check 'empty': 'expected' names no output, so the check would compare nothing",
        ),
    ],
    ids=["misspelt-output", "unknown-input", "nothing-expected"],
)
def test_a_golden_check_that_would_check_nothing_is_refused(
    registry: ModelRegistry, register: Register, check: GoldenCheck, message: str
) -> None:
    """A misspelt output was skipped, so its wrong expectation (9s) passed."""
    assert_refused_before_anything_is_stored(registry, register, message, golden=(check,))


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"batch_size": -1}, "parameter batch_size must be an integer from 1 to 128"),
        ({"batch_size": 0}, "parameter batch_size must be an integer from 1 to 128"),
        ({"batch_size": 2.0}, "parameter batch_size must be an integer from 1 to 128"),
        ({"batch_size": True}, "parameter batch_size must be an integer from 1 to 128"),
        ({"batch_size": 10**9}, "parameter batch_size must be an integer from 1 to 128"),
        ({"seed": 1.5}, "parameter seed must be a 64-bit integer"),
        ({"seed": "7"}, "parameter seed must be a 64-bit integer"),
        ({"seed": 2**63}, "parameter seed must be a 64-bit integer"),
    ],
    ids=[
        "negative",
        "zero",
        "float",
        "bool",
        "huge",
        "float-seed",
        "str-seed",
        "seed-past-64-bits",
    ],
)
def test_golden_parameters_generation_cannot_use_are_refused(
    registry: ModelRegistry, register: Register, parameters: dict[str, object], message: str
) -> None:
    check = GoldenCheck(name="drawn", inputs={}, parameters=parameters, expected={"y": Y})
    assert_refused_before_anything_is_stored(
        registry, register, f"golden check 'drawn': {message}", signature=GENERATED, golden=(check,)
    )


@pytest.mark.parametrize("seed", [-(2**63), 2**63 - 1])
def test_seeds_at_the_ends_of_the_64_bit_range_draw_inputs(seed: int) -> None:
    check = GoldenCheck(inputs={}, parameters={"batch_size": 3, "seed": seed}, expected={"y": Y})
    [x] = golden_inputs(GENERATED, check)
    assert x.shape == (3, 4)


@pytest.mark.parametrize(
    "parameters", [{"batch_size": -1}, {"seed": 1.5}, {"seed": 2**64}], ids=str
)
def test_a_stored_check_whose_inputs_cannot_be_drawn_fails_as_a_golden_check_error(
    parameters: dict[str, object],
) -> None:
    """A version registered before the checks above runs its checks when a server loads it:
    torch's RuntimeError and OverflowError escaped as a traceback."""
    check = GoldenCheck(name="old", inputs={}, parameters=parameters, expected={"y": Y})
    with pytest.raises(GoldenCheckError, match=r"^golden check 'old': bad input: ") as caught:
        golden_inputs(GENERATED, check)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"metadata": {"scores": [0.5, float("nan")]}}, "metadata.scores.1 is nan"),
        (
            {"golden": (GoldenCheck(inputs={"x": [[0] * 4]}, expected={"y": Y}, atol=1e400),)},
            "golden.0.atol is inf",
        ),
        (
            {
                "signature": TINY_SIGNATURE.model_copy(
                    update={"parameters": {"t": ParameterSpec(type="float", maximum=1e999)}}
                )
            },
            "signature.parameters.t.maximum is inf",
        ),
    ],
    ids=["metadata-nan", "golden-atol-inf", "parameter-bound-inf"],
)
def test_a_number_json_cannot_hold_is_refused_naming_its_field(
    registry: ModelRegistry, register: Register, options: dict[str, object], message: str
) -> None:
    """Written as null, a NaN in the metadata was silently lost, and a tolerance of null made the
    manifest unreadable (reported as "nested too deeply")."""
    assert_refused_before_anything_is_stored(
        registry,
        register,
        f"{message}: a manifest is JSON, which has no NaN or infinity",
        **options,
    )
