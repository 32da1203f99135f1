"""Train the bundled demo models on scikit-learn's digits: `python -m models.demo.train`.

Writes `weights/<name>.safetensors`, `weights/<name>.golden.json`, `weights/metrics.json` and
`samples/digit-<label>.png` under `--out` (default: this package). Seeded and single-process, so
a re-run on the same machine and torch version gives the same weights. Needs the `train` extra
(scikit-learn), whose wheel carries the data: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from models.demo.catalog import DATASET, demo_model
from models.families import build_model
from models.tensors import generate

SEED = 0
HELD_OUT_FRACTION = 0.2
SIZE = 28
THREADS = 2
GOLDEN_PER_MODEL = 3
CNN_EPOCHS = 40
VAE_EPOCHS = 150
BATCH = 64
MAX_SHIFT = 2  # pixels of the 28x28 image, for the CNN's augmentation


class Digits(NamedTuple):
    images: torch.Tensor  # float32 (N, 1, 28, 28) in [0, 1], multiples of 1/255
    labels: torch.Tensor  # int64 (N,)


def prepare_digits() -> Digits:
    """All 1797 digits, scaled to [0, 1], resized bilinearly to 28x28 and quantised to 8 bits.

    The quantisation makes a digit saved as a PNG decode (scaled by 1/255) to exactly the
    tensor the model saw, which is what the server does with an uploaded image.
    """
    data = load_digits()
    images = torch.from_numpy(data.images.astype(np.float32) / 16.0).unsqueeze(1)
    images = F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    images = torch.round(images.clamp(0.0, 1.0) * 255.0) / 255.0
    return Digits(images.contiguous(), torch.from_numpy(data.target.astype(np.int64)))


def split_digits(digits: Digits) -> tuple[Digits, Digits]:
    """The fixed stratified split: (training, held-out)."""
    indices = np.arange(len(digits.labels))
    train, held_out = train_test_split(
        indices,
        test_size=HELD_OUT_FRACTION,
        random_state=SEED,
        stratify=digits.labels.numpy(),
    )
    train_ix, held_ix = torch.from_numpy(np.sort(train)), torch.from_numpy(np.sort(held_out))
    return (
        Digits(digits.images[train_ix], digits.labels[train_ix]),
        Digits(digits.images[held_ix], digits.labels[held_ix]),
    )


def shifted(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image moved by a random whole-pixel offset of up to MAX_SHIFT, zero-filled."""
    n = images.shape[0]
    padded = F.pad(images, (MAX_SHIFT,) * 4)
    offsets = torch.randint(0, 2 * MAX_SHIFT + 1, (n, 2), generator=generator)
    out = torch.empty_like(images)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = padded[i, :, dy : dy + SIZE, dx : dx + SIZE]
    return out


def batches(n: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    yield from torch.split(order, BATCH)


def train_cnn(train: Digits, held_out: Digits) -> tuple[nn.Module, float]:
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    config = demo_model("cnn-digits").family_config
    # Trained on logits; the served config adds the softmax, which has no weights.
    model = build_model("cnn", {**config, "softmax": False})
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = CNN_EPOCHS * -(-len(train.labels) // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=2e-3, total_steps=steps)
    model.train()
    for _ in range(CNN_EPOCHS):
        for ix in batches(len(train.labels), generator):
            loss = F.cross_entropy(model(shifted(train.images[ix], generator)), train.labels[ix])
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            schedule.step()
    served = build_model("cnn", config)
    served.load_state_dict(model.state_dict())
    served.eval()
    with torch.inference_mode():
        predicted = served(held_out.images).argmax(dim=1)
    accuracy = (predicted == held_out.labels).float().mean().item()
    return served, accuracy


def train_vae(train: Digits, held_out: Digits) -> tuple[nn.Module, float, float]:
    """The VAE, its held-out reconstruction BCE per image, and that BCE's floor.

    The targets are grey levels, not bits, so even a perfect reconstruction has a BCE: the
    entropy of the targets, reported beside it as the floor.
    """
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    model = build_model("vae", demo_model("vae-digits").family_config)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(VAE_EPOCHS):
        for ix in batches(len(train.labels), generator):
            x = train.images[ix]
            reconstruction, mean, log_var = model.sample_forward(x)  # type: ignore[operator]
            bce = F.binary_cross_entropy(reconstruction, x, reduction="sum")
            kl = -0.5 * torch.sum(1 + log_var - mean.pow(2) - log_var.exp())
            loss = (bce + kl) / len(ix)
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
    model.eval()
    with torch.inference_mode():
        reconstruction, _ = model(held_out.images)
        bce = F.binary_cross_entropy(reconstruction, held_out.images, reduction="sum")
        floor = F.binary_cross_entropy(held_out.images, held_out.images, reduction="sum")
    n = len(held_out.labels)
    return model, bce.item() / n, floor.item() / n


def rounded(tensor: torch.Tensor) -> Any:
    return np.round(tensor.detach().numpy().astype(np.float64), 6).tolist()


def golden_checks(
    model: nn.Module, output_names: Sequence[str], held_out: Digits, picks: Sequence[int]
) -> list[dict[str, Any]]:
    """One check per picked held-out digit, expected outputs computed from the stored input."""
    checks = []
    for i in picks:
        # Computed from the rounded input as the registry will read it back from JSON.
        image = rounded(held_out.images[i : i + 1])
        with torch.inference_mode():
            result = model(torch.tensor(image, dtype=torch.float32))
        outputs = result if isinstance(result, tuple) else (result,)
        checks.append(
            {
                "name": f"held-out digit #{i} (true label {int(held_out.labels[i])})",
                "inputs": {"image": image},
                "expected": {n: rounded(o) for n, o in zip(output_names, outputs, strict=True)},
                "atol": 1e-4,
                "rtol": 1e-4,
            }
        )
    return checks


def confident_picks(probabilities: torch.Tensor, labels: torch.Tensor) -> list[int]:
    """The first correctly and confidently classified held-out digit of each class, in order.

    Confident ones keep golden checks stable across devices: probabilities near 0 or 1 move
    little when a GPU's arithmetic differs in the last bits.
    """
    top, predicted = probabilities.max(dim=1)
    picks: list[int] = []
    for label in range(10):
        good = ((predicted == label) & (labels == label) & (top > 0.999)).nonzero().flatten()
        if len(good) == 0:
            good = ((predicted == label) & (labels == label)).nonzero().flatten()
        if len(good) == 0:
            raise RuntimeError(f"no held-out {label} is classified correctly")
        picks.append(int(good[0]))
    return picks


def save_weights(model: nn.Module, path: Path, prefix: str = "") -> None:
    state = {
        name: tensor.detach().contiguous().clone()
        for name, tensor in model.state_dict().items()
        if name.startswith(prefix)
    }
    save_file(state, str(path))


def write_json(path: Path, value: Any, *, compact: bool = False) -> None:
    text = json.dumps(value, separators=(",", ":")) if compact else json.dumps(value, indent=1)
    path.write_text(text + "\n")


def decoder_check(vae: nn.Module) -> dict[str, Any]:
    """The decoder's check: latents drawn as the server draws them for batch_size 2, seed 7."""
    spec = demo_model("vae-digits-decoder").signature.input("latent")
    latent = generate(spec, batch_size=2, seed=7)
    with torch.inference_mode():
        image = vae.decoder(latent)  # type: ignore[operator]
    return {
        "name": "two digits drawn with seed 7",
        "inputs": {},
        "parameters": {"batch_size": 2, "seed": 7},
        "expected": {"image": rounded(image)},
        "atol": 1e-4,
        "rtol": 1e-4,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="output root")
    out: Path = parser.parse_args(argv).out
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    weights, samples = out / "weights", out / "samples"
    weights.mkdir(parents=True, exist_ok=True)
    samples.mkdir(parents=True, exist_ok=True)

    train, held_out = split_digits(prepare_digits())
    started = time.perf_counter()
    cnn, accuracy = train_cnn(train, held_out)
    cnn_seconds = time.perf_counter() - started
    print(f"cnn-digits: held-out accuracy {accuracy:.4f} ({cnn_seconds:.0f} s)")  # noqa: T201
    started = time.perf_counter()
    vae, bce, floor = train_vae(train, held_out)
    vae_seconds = time.perf_counter() - started
    pixels = SIZE * SIZE
    print(  # noqa: T201
        f"vae-digits: held-out reconstruction BCE {bce:.2f} per image "
        f"(floor {floor:.2f}, the targets' own entropy) ({vae_seconds:.0f} s)"
    )

    with torch.inference_mode():
        probabilities = cnn(held_out.images)
    picks = confident_picks(probabilities, held_out.labels)
    for label, i in enumerate(picks):
        pixels_u8 = (held_out.images[i, 0] * 255.0).round().to(torch.uint8).numpy()
        Image.fromarray(pixels_u8).save(samples / f"digit-{label}.png", optimize=True)

    save_weights(cnn, weights / "cnn-digits.safetensors")
    save_weights(vae, weights / "vae-digits.safetensors")
    save_weights(vae, weights / "vae-digits-decoder.safetensors", prefix="decoder.")
    golden_picks = picks[:GOLDEN_PER_MODEL]
    write_json(
        weights / "cnn-digits.golden.json",
        golden_checks(cnn, ["probabilities"], held_out, golden_picks),
        compact=True,
    )
    write_json(
        weights / "vae-digits.golden.json",
        golden_checks(vae, ["reconstruction", "latent"], held_out, golden_picks),
        compact=True,
    )
    write_json(weights / "vae-digits-decoder.golden.json", [decoder_check(vae)], compact=True)
    write_json(
        weights / "metrics.json",
        {
            "dataset": DATASET,
            "preprocessing": "x/16, bilinear resize 8x8 -> 28x28, quantised to multiples of 1/255",
            "split": {
                "method": "sklearn train_test_split, stratified by label",
                "held_out_fraction": HELD_OUT_FRACTION,
                "random_state": SEED,
                "train": len(train.labels),
                "held_out": len(held_out.labels),
            },
            "seed": SEED,
            "torch_version": torch.__version__,
            "threads": THREADS,
            "training_seconds": {"cnn": round(cnn_seconds, 1), "vae": round(vae_seconds, 1)},
            "models": {
                "cnn-digits": {"accuracy": round(accuracy, 4), "epochs": CNN_EPOCHS},
                "vae-digits": {
                    "reconstruction_bce_per_image": round(bce, 3),
                    "reconstruction_bce_per_pixel": round(bce / pixels, 5),
                    "reconstruction_bce_floor_per_image": round(floor, 3),
                    "epochs": VAE_EPOCHS,
                },
                "vae-digits-decoder": {"decoder_of": "vae-digits"},
            },
        },
    )


if __name__ == "__main__":
    main()
