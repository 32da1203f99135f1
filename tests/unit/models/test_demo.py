"""The bundled demo models: seeding a registry, and what the committed weights do."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from models.demo import DEMO_MODELS, DEMO_VERSION, demo_metrics, demo_model, sample_png, seed_demo
from models.demo.catalog import DemoModel
from models.errors import ConflictError, VersionExistsError
from models.formats import LoadedModel
from models.golden import run_golden_checks
from models.manifest import ModelManifest
from models.registry import ModelRegistry
from models.stages import ModelIndex
from models.tensors import generate

DEMO_NAMES = ["cnn-digits", "vae-digits", "vae-digits-decoder"]
WEIGHTS = Path(__file__).parents[3] / "models" / "demo" / "weights"


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    registry = ModelRegistry(tmp_path_factory.mktemp("seeded"))
    seed_demo(registry)
    return registry


@pytest.fixture(scope="module")
def cnn(seeded: ModelRegistry) -> Iterator[LoadedModel]:
    model = seeded.load(seeded.resolve("cnn-digits"))
    yield model
    model.release()


@pytest.fixture(scope="module")
def decoder(seeded: ModelRegistry) -> Iterator[LoadedModel]:
    model = seeded.load(seeded.resolve("vae-digits-decoder"))
    yield model
    model.release()


def decode_png(data: bytes) -> torch.Tensor:
    """What the server does with an uploaded image: Pillow, 8-bit greyscale, scaled by 1/255."""
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "L"
        assert image.size == (28, 28)
        pixels = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).reshape(1, 1, 28, 28)


# ---------------------------------------------------------------- seeding


def test_seeding_registers_every_demo_model_and_puts_it_in_production(
    registry: ModelRegistry,
) -> None:
    manifests = seed_demo(registry)

    assert [m.name for m in manifests] == DEMO_NAMES
    assert sorted(registry.list_models()) == DEMO_NAMES
    for name in DEMO_NAMES:
        index = registry.index(name)
        assert index.versions == [DEMO_VERSION]
        assert index.aliases["production"] == DEMO_VERSION
        assert [e.action for e in index.history] == ["register", "promote"]
        assert {e.actor for e in index.history} == {"seed-demo"}


def test_seeding_twice_registers_nothing_and_moves_nothing_the_second_time(
    registry: ModelRegistry,
) -> None:
    seed_demo(registry, actor="first")
    before = {name: registry.index(name) for name in DEMO_NAMES}

    assert seed_demo(registry, actor="second") == []
    assert {name: registry.index(name) for name in DEMO_NAMES} == before


def test_seeding_leaves_a_production_version_that_is_already_there_alone(
    registry: ModelRegistry,
) -> None:
    cnn = demo_model("cnn-digits")
    register_as(registry, cnn, "0.9.0")
    registry.promote(cnn.name, "0.9.0", "production", actor="someone")

    seed_demo(registry)

    index = registry.index(cnn.name)
    assert index.versions == ["0.9.0", DEMO_VERSION]
    assert index.aliases["production"] == "0.9.0"
    assert registry.index("vae-digits").aliases["production"] == DEMO_VERSION


def test_a_version_a_concurrent_seeder_registered_first_is_skipped_not_an_error(
    tmp_path: Path,
) -> None:
    class RacedRegistry(ModelRegistry):
        def register(self, name: str, version: str, *args: Any, **kwargs: Any) -> ModelManifest:
            super().register(name, version, *args, **kwargs)  # the other seeder's write
            raise VersionExistsError(name, version)

    registry = RacedRegistry(tmp_path)

    assert seed_demo(registry) == []
    assert all(registry.index(n).aliases["production"] == DEMO_VERSION for n in DEMO_NAMES)


def test_a_promotion_that_loses_its_compare_and_swap_is_left_to_the_winner(
    tmp_path: Path,
) -> None:
    class ContendedRegistry(ModelRegistry):
        def promote(self, name: str, *args: Any, **kwargs: Any) -> ModelIndex:
            raise ConflictError(f"{name} changed meanwhile")

    registry = ContendedRegistry(tmp_path)

    assert [m.name for m in seed_demo(registry)] == DEMO_NAMES
    assert all(registry.index(n).aliases["production"] is None for n in DEMO_NAMES)


def test_seeded_manifests_carry_the_data_set_the_split_and_held_out_metrics(
    seeded: ModelRegistry,
) -> None:
    metrics = demo_metrics()
    for demo in DEMO_MODELS:
        manifest = seeded.resolve(demo.name)
        assert manifest.deterministic
        assert manifest.family == demo.family
        assert manifest.family_config == demo.family_config
        assert manifest.signature == demo.signature
        assert manifest.golden == demo.golden()
        assert manifest.metadata["dataset"].startswith("scikit-learn load_digits")
        assert manifest.metadata["split"]["held_out"] == 360
        assert manifest.metadata["held_out"] == metrics["models"][demo.name]
    assert seeded.resolve("cnn-digits").metadata["held_out"]["accuracy"] >= 0.95


# ---------------------------------------------------------------- the catalogue


def test_demo_models_are_found_by_name_and_an_unknown_name_is_a_key_error() -> None:
    assert demo_model("vae-digits").family == "vae"
    with pytest.raises(KeyError):
        demo_model("mnist")


def test_image_inputs_accept_encoded_28x28_greyscale_images() -> None:
    for name in ("cnn-digits", "vae-digits"):
        image = demo_model(name).signature.input("image").image
        assert image is not None
        assert (image.mode, image.height, image.width) == ("L", 28, 28)
        assert image.formats == ("PNG", "JPEG", "WEBP")
        assert image.max_pixels == 4096 * 4096


def test_the_decoder_draws_its_latents_when_the_request_gives_batch_size_and_seed() -> None:
    signature = demo_model("vae-digits-decoder").signature
    assert signature.input("latent").generate == "standard_normal"
    assert signature.parameters["batch_size"].maximum == 128
    assert signature.parameters["seed"].maximum == 2**31 - 1


def test_every_weights_file_is_small_and_the_decoder_is_exactly_the_vae_decoder() -> None:
    for demo in DEMO_MODELS:
        assert (WEIGHTS / demo.weights).stat().st_size < 5_000_000
    vae = load_file(WEIGHTS / "vae-digits.safetensors")
    decoder = load_file(WEIGHTS / "vae-digits-decoder.safetensors")
    assert decoder.keys() == {k for k in vae if k.startswith("decoder.")}
    assert all(torch.equal(decoder[k], vae[k]) for k in decoder)


def test_sample_png_refuses_a_label_that_is_not_a_digit() -> None:
    with pytest.raises(ValueError, match="0-9"):
        sample_png(10)


# ---------------------------------------------------------------- what the weights do


@pytest.mark.parametrize("label", range(10))
def test_the_demo_cnn_classifies_each_sample_digit_correctly(cnn: LoadedModel, label: int) -> None:
    (probabilities,) = cnn.forward([decode_png(sample_png(label))])

    assert probabilities.shape == (1, 10)
    assert int(probabilities.argmax()) == label
    assert float(probabilities.sum()) == pytest.approx(1.0, abs=1e-5)


def test_the_decoder_draws_the_same_digits_for_the_same_seed(decoder: LoadedModel) -> None:
    spec = decoder.signature.input("latent")

    def draw(seed: int) -> torch.Tensor:
        (images,) = decoder.forward([generate(spec, batch_size=4, seed=seed)])
        return images

    first, again, other = draw(123), draw(123), draw(124)
    assert first.shape == (4, 1, 28, 28)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0


@pytest.mark.parametrize("name", DEMO_NAMES)
def test_the_golden_checks_of_each_demo_model_pass_after_seeding(
    seeded: ModelRegistry, name: str
) -> None:
    model = seeded.load(seeded.resolve(name))
    assert model.manifest.golden
    run_golden_checks(model)  # raises GoldenCheckError on a mismatch


def test_cnn_golden_checks_name_the_true_label_the_expected_output_predicts() -> None:
    for check in demo_model("cnn-digits").golden():
        match = re.search(r"true label (\d)", check.name)
        assert match is not None
        assert int(np.argmax(check.expected["probabilities"][0])) == int(match[1])


# ---------------------------------------------------------------- the training data


def test_prepared_digits_are_28x28_grey_levels_in_the_unit_interval() -> None:
    from models.demo.train import prepare_digits

    digits = prepare_digits()

    assert digits.images.shape == (1797, 1, 28, 28)
    assert digits.images.dtype == torch.float32
    assert float(digits.images.min()) == 0.0 and float(digits.images.max()) == 1.0
    levels = digits.images * 255.0
    assert torch.equal(levels, levels.round())  # an 8-bit PNG holds them exactly
    assert set(digits.labels.tolist()) == set(range(10))


def test_the_held_out_split_is_fixed_stratified_and_covers_every_digit_once() -> None:
    from models.demo.train import prepare_digits, split_digits

    digits = prepare_digits()
    train, held_out = split_digits(digits)
    again_train, _ = split_digits(digits)

    assert (len(train.labels), len(held_out.labels)) == (1437, 360)
    assert torch.equal(train.images, again_train.images)
    counts = train.labels.bincount() + held_out.labels.bincount()
    assert torch.equal(counts, digits.labels.bincount())
    assert held_out.labels.bincount().min() >= 35  # every class is held out in proportion


def test_each_sample_png_decodes_to_exactly_a_held_out_digit_of_its_label() -> None:
    from models.demo.train import prepare_digits, split_digits

    _, held_out = split_digits(prepare_digits())
    rows = held_out.images.flatten(1)
    for label in range(10):
        matches = (rows == decode_png(sample_png(label)).flatten()).all(dim=1).nonzero()
        assert len(matches) >= 1
        assert all(int(held_out.labels[i]) == label for i in matches.flatten())


def register_as(registry: ModelRegistry, demo: DemoModel, version: str) -> ModelManifest:
    return registry.register(
        demo.name,
        version,
        WEIGHTS / demo.weights,
        format="safetensors",
        signature=demo.signature,
        family=demo.family,
        family_config=demo.family_config,
    )
