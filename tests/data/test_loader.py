"""Tests for utils/data/loader.py: per-sample seeded augmentation, persistent workers, samplers, worker errors,
to_device."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from utils.data.dataset import SegmentationDataset
from utils.data.loader import build_loader, sample_rng, set_loader_epoch, to_device
from utils.errors import UserError


class _RandomValues(torch.utils.data.Dataset):
    """Each item is (index, a draw from the sample's generator, the loading process's pid)."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def sample(self, index: int, rng: np.random.Generator) -> torch.Tensor:
        return torch.tensor([index, rng.integers(1 << 62), os.getpid()])


def _draws(loader) -> list[tuple[int, int]]:
    """(index, draw) of every sample of one pass, in loader order."""
    return [(index, value) for batch in loader for index, value, _ in batch.tolist()]


def _pids(loader) -> set[int]:
    return {pid for batch in loader for _, _, pid in batch.tolist()}


def test_user_error_from_a_worker_keeps_its_plain_message(voc_dataset_factory):
    root = voc_dataset_factory()
    loader = build_loader(SegmentationDataset(root, "train", 16, num_classes=2, train=True), 2, train=True,
                          workers=1, seed=0)
    with pytest.raises(UserError) as info:
        next(iter(loader))
    assert "only 2 classes" in str(info.value) and "Traceback" not in str(info.value)


def test_each_sample_is_a_function_of_seed_epoch_and_index_whatever_the_workers():
    def passes(workers: int) -> list[list[tuple[int, int]]]:
        loader = build_loader(_RandomValues(8), 2, train=True, workers=workers, seed=3)
        return [_draws(loader) for _ in range(2)]  # epochs 0 and 1 (a second pass advances the epoch)

    by_workers = {workers: passes(workers) for workers in (0, 1, 2)}
    assert by_workers[0] == by_workers[1] == by_workers[2]  # same order, same draws
    assert passes(2) == by_workers[2]  # a second loader instance
    for epoch, draws in enumerate(by_workers[0]):
        assert sorted(index for index, _ in draws) == list(range(8))
        # The draw is the sample's own generator's, seeded from (seed, epoch, index) alone.
        assert all(value == sample_rng(3, epoch, index).integers(1 << 62) for index, value in draws)
    values = [value for draws in by_workers[0] for _, value in draws]
    assert len(set(values)) == len(values)  # independent per sample and per epoch
    other_seed = build_loader(_RandomValues(8), 2, train=True, workers=0, seed=4)
    assert dict(_draws(other_seed)) != dict(by_workers[0][0])


def test_augmented_batches_do_not_depend_on_the_worker_count(voc_dataset_factory):
    root = voc_dataset_factory()

    def batches(workers: int, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        dataset = SegmentationDataset(root, "train", 24, num_classes=3, train=True)
        loader = build_loader(dataset, 2, train=True, workers=workers, seed=11, pin_memory=False)
        set_loader_epoch(loader, epoch)
        return [(images.clone(), labels.clone()) for images, labels in loader]

    first = batches(0, 0)
    assert len(first) == 2 and first[0][0].shape == (2, 3, 24, 24) and first[0][0].is_contiguous()
    for workers in (0, 1, 2):
        for (i1, l1), (i2, l2) in zip(first, batches(workers, 0), strict=True):
            assert torch.equal(i1, i2) and torch.equal(l1, l2)
    later = batches(2, 1)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, later, strict=True))


def test_workers_persist_across_epochs_and_validation_passes():
    loader = build_loader(_RandomValues(8), 2, train=True, workers=2, seed=0, pin_memory=False)
    set_loader_epoch(loader, 0)
    first = _pids(loader)
    iterator = loader._iterator
    set_loader_epoch(loader, 1)
    second = _pids(loader)
    assert len(first) == 2 and os.getpid() not in first
    assert second == first and loader._iterator is iterator
    val = build_loader(_RandomValues(5), 2, train=False, workers=1, seed=0, pin_memory=False)
    assert _pids(val) == _pids(val)
    loader.release_workers()
    assert loader._iterator is None
    set_loader_epoch(loader, 2)
    assert _pids(loader).isdisjoint(first)  # new workers after a release


def test_an_epoch_abandoned_midway_does_not_leak_into_the_next():
    """A stop or a resume skip leaves a pass unfinished; the next pass of the kept workers is still exact."""
    loader = build_loader(_RandomValues(12), 2, train=True, workers=2, seed=5, pin_memory=False)
    set_loader_epoch(loader, 0)
    batches = iter(loader)
    next(batches)
    set_loader_epoch(loader, 1)
    fresh = build_loader(_RandomValues(12), 2, train=True, workers=0, seed=5)
    set_loader_epoch(fresh, 1)
    assert _draws(loader) == _draws(fresh)


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


@pytest.mark.parametrize("workers", [0, 1])
def test_loading_leaves_the_training_process_generators_alone(workers):
    """Neither in-process loading nor starting workers draws from or reseeds random/numpy/torch here."""
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone())
    loader = build_loader(_RandomValues(6), 2, train=True, workers=workers, seed=7, pin_memory=False)
    first = _draws(loader)
    set_loader_epoch(loader, 0)
    assert _draws(loader) == first
    assert random.getstate() == before[0]
    assert np.array_equal(np.random.get_state()[1], before[1])
    assert torch.equal(torch.get_rng_state(), before[2])
