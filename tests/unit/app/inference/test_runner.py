"""The runner's device helpers: picking the device, CUDA math, warm-up sizes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from app.inference.runner import pick_device, set_cuda_math, warmup_batch_sizes


@pytest.fixture
def restore_cuda_math() -> Iterator[None]:
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_auto_picks_cuda_only_when_there_is_one() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected
    assert pick_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_cuda_without_a_device_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="FRAMEWORM_DEVICE=cuda:1 but CUDA is not available"):
        pick_device("cuda:1")


@pytest.mark.usefixtures("restore_cuda_math")
def test_tf32_follows_the_one_setting_for_convolutions_and_matmuls() -> None:
    # cuDNN's own default is TF32 on: the strict setting must switch it off.
    torch.backends.cudnn.allow_tf32 = True
    set_cuda_math(allow_tf32=False)
    assert not torch.backends.cudnn.allow_tf32
    assert not torch.backends.cuda.matmul.allow_tf32
    set_cuda_math(allow_tf32=True)
    assert torch.backends.cudnn.allow_tf32
    assert torch.backends.cuda.matmul.allow_tf32


@pytest.mark.parametrize(
    ("max_batch", "sizes"),
    [(1, [1]), (2, [1, 2]), (32, [1, 2, 4, 8, 16, 32]), (48, [1, 2, 4, 8, 16, 32, 48])],
)
def test_warm_up_covers_powers_of_two_and_the_maximum(max_batch: int, sizes: list[int]) -> None:
    assert warmup_batch_sizes(max_batch) == sizes
