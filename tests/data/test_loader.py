"""Tests for utils/data/loader.py: seeded, reproducible loaders, samplers, worker errors, to_device."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from utils.data.dataset import SegmentationDataset
from utils.data.loader import build_loader, set_loader_epoch, to_device, worker_seed
from utils.errors import UserError


class _RandomValues(torch.utils.data.Dataset):
    """Each item is a draw from the dataset's generator: shows how workers are seeded."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.rng = np.random.default_rng()

    def set_rng(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([index, self.rng.integers(1 << 62)])


def _draws(loader) -> list[tuple[int, int]]:
    return [tuple(row) for batch in loader for row in batch.tolist()]


def test_user_error_from_a_worker_keeps_its_plain_message(voc_dataset_factory):
    root = voc_dataset_factory()
    loader = build_loader(SegmentationDataset(root, "train", 16, num_classes=2, train=True), 2, train=True,
                          workers=1, seed=0)
    with pytest.raises(UserError) as info:
        next(iter(loader))
    assert "only 2 classes" in str(info.value) and "Traceback" not in str(info.value)


def test_workers_are_seeded_distinctly_and_reproducibly():
    first = _draws(build_loader(_RandomValues(8), 2, train=True, workers=2, seed=3))
    second = _draws(build_loader(_RandomValues(8), 2, train=True, workers=2, seed=3))
    assert first == second  # same seed: same order and same draws
    values = [v for _, v in first]
    assert len(set(values)) == len(values)  # no two workers repeat each other's stream
    other_seed = _draws(build_loader(_RandomValues(8), 2, train=True, workers=2, seed=4))
    assert first != other_seed
    loader = build_loader(_RandomValues(8), 2, train=True, workers=2, seed=3)
    set_loader_epoch(loader, 1)
    assert _draws(loader) != first
    assert len({worker_seed(0, r, w, e).generate_state(1)[0] for r in range(2) for w in range(3)
                for e in range(3)}) == 18


def test_loader_reproducible_batches_on_real_data(voc_dataset_factory):
    root = voc_dataset_factory()

    def batches():
        dataset = SegmentationDataset(root, "train", 24, num_classes=3, train=True)
        loader = build_loader(dataset, 2, train=True, workers=0, seed=11)
        return [(images.clone(), labels.clone()) for images, labels in loader]

    first, second = batches(), batches()
    assert len(first) == 2
    for (i1, l1), (i2, l2) in zip(first, second, strict=True):
        assert torch.equal(i1, i2) and torch.equal(l1, l2)
        assert i1.shape == (2, 3, 24, 24) and i1.is_contiguous()


def test_iterating_again_without_set_epoch_advances_augmentation():
    loader = build_loader(_RandomValues(4), 2, train=True, workers=0, seed=0)
    assert _draws(loader) != _draws(loader)
    set_loader_epoch(loader, 0)
    again = _draws(loader)
    assert again == _draws(build_loader(_RandomValues(4), 2, train=True, workers=0, seed=0))


def test_validation_loader_keeps_order_and_every_sample():
    loader = build_loader(_RandomValues(7), 3, train=False, workers=0, seed=0)
    assert [i for i, _ in _draws(loader)] == list(range(7))
    train_loader = build_loader(_RandomValues(7), 3, train=True, workers=0, seed=0)
    assert len(_draws(train_loader)) == 6  # training drops the incomplete batch
    shards = [[i for i, _ in _draws(build_loader(_RandomValues(7), 2, train=False, workers=0, seed=0,
                                                 rank=r, world_size=3))] for r in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(7))


def test_to_device():
    images = torch.tensor([[[[0, 255]]]], dtype=torch.uint8).expand(1, 3, 1, 2)
    labels = torch.tensor([[[1, 255]]], dtype=torch.uint8)
    x, y = to_device(images, labels, "cpu", channels_last=True)
    grid = torch.arange(12, dtype=torch.uint8).view(1, 3, 2, 2)
    nhwc, _ = to_device(grid, labels, "cpu", channels_last=True)
    assert nhwc.stride() == (12, 1, 6, 3)  # channels innermost
    torch.testing.assert_close(nhwc, grid.float() / 255)
    assert x.dtype == torch.float32 and x.max().item() == 1.0 and x.min().item() == 0.0
    assert y.dtype == torch.int64 and y.tolist() == [[[1, 255]]]


def test_in_process_loading_leaves_the_global_generators_alone():
    """workers=0: only the dataset's generator is seeded, not random/numpy/torch of the training process."""
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone())
    loader = build_loader(_RandomValues(6), 2, train=True, workers=0, seed=7)
    first = _draws(loader)
    set_loader_epoch(loader, 0)
    assert _draws(loader) == first  # the dataset's own stream is still a function of (seed, epoch)
    assert random.getstate() == before[0]
    assert np.array_equal(np.random.get_state()[1], before[1])
    assert torch.equal(torch.get_rng_state(), before[2])
