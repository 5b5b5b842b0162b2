"""Data loaders whose order and augmentation are a pure function of (seed, rank, worker, epoch).

:func:`build_loader` gives the loader of a split (training shuffles, validation keeps order;
:class:`ShardSampler` / ``DistributedSampler`` under torchrun), :func:`set_loader_epoch` picks
the epoch that seeds the next pass, and :func:`to_device` turns a uint8 batch into float
images in [0, 1] and int64 labels on the device.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from utils.errors import UserError


def worker_seed(seed: int, rank: int, worker: int, epoch: int) -> np.random.SeedSequence:
    """Seed sequence for one data worker: distinct for every (seed, rank, worker, epoch) and reproducible."""
    return np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(rank), int(worker), int(epoch)])


def _seed_everything_here(dataset: Dataset, sequence: np.random.SeedSequence) -> None:
    """Seed this process's numpy/random/torch generators and the dataset's augmentation generator."""
    words = sequence.generate_state(4)
    random.seed(int(words[0]))
    # Third-party code may draw from the legacy global generator: seed it too.
    np.random.seed(int(words[1]))
    torch.manual_seed(int(words[2]) << 32 | int(words[3]))
    if hasattr(dataset, "set_rng"):
        dataset.set_rng(np.random.default_rng(sequence))


class _WorkerInit:
    """Picklable worker_init_fn; the loader updates ``epoch`` before each pass starts its workers."""

    def __init__(self, seed: int, rank: int) -> None:
        self.seed, self.rank, self.epoch = seed, rank, 0

    def __call__(self, worker_id: int) -> None:
        info = torch.utils.data.get_worker_info()
        _seed_everything_here(info.dataset, worker_seed(self.seed, self.rank, worker_id, self.epoch))


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank`` in order: no shuffling, no padding, no duplicates."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _plain_worker_errors(batches):
    """Re-raise a worker's UserError with its own message, without the worker traceback torch adds."""
    try:
        yield from batches
    except UserError as exc:
        text = str(exc)
        if "DataLoader worker" not in text or "UserError: " not in text:
            raise
        raise UserError(text.rsplit("UserError: ", 1)[-1].strip()) from None


class SeededLoader(DataLoader):
    """DataLoader whose shuffling and augmentation are a pure function of (seed, rank, worker, epoch).

    Call :func:`set_loader_epoch` before each epoch; an epoch that is iterated a second time
    without it advances to the next epoch on its own, so augmentations never repeat by mistake.
    Workers are started afresh for every pass (no persistent workers) so each pass reseeds them.
    """

    def __init__(self, *args, seed: int, rank: int, **kwargs) -> None:
        self.seed, self.rank = int(seed), int(rank)
        self.worker_init = _WorkerInit(self.seed, self.rank)
        self.shuffle_generator = torch.Generator()
        super().__init__(*args, worker_init_fn=self.worker_init, generator=self.shuffle_generator, **kwargs)
        self.epoch = 0
        self._epoch_used = False

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch``."""
        self.epoch = int(epoch)
        self._epoch_used = False

    def __iter__(self):
        if self._epoch_used:
            self.set_epoch(self.epoch + 1)
        self._epoch_used = True
        self.worker_init.epoch = self.epoch
        self.shuffle_generator.manual_seed(
            int(worker_seed(self.seed, self.rank, 1 << 30, self.epoch).generate_state(1, np.uint64)[0] >> 1))
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(self.epoch)
        if self.num_workers == 0 and hasattr(self.dataset, "set_rng"):
            # In-process loading: seed only the dataset's own generator. Reseeding the global
            # random/numpy/torch generators here would reset the training process's streams
            # (dropout, anything else drawing from them) on every pass.
            self.dataset.set_rng(np.random.default_rng(worker_seed(self.seed, self.rank, 0, self.epoch)))
        return _plain_worker_errors(super().__iter__())


def build_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    workers: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool | None = None,
    pin_memory: bool | None = None,
) -> SeededLoader:
    """Build the loader for a split: training shuffles, validation keeps order and every sample.

    With ``world_size > 1`` training uses a :class:`DistributedSampler` (seeded by ``seed``) and
    validation a :class:`ShardSampler` (each sample on exactly one rank). ``drop_last`` defaults
    to True for training when there is at least one full batch, and is always False for validation.
    Worker seeds derive from (seed, rank, worker, epoch); see :func:`set_loader_epoch`.
    ``pin_memory`` defaults to whether CUDA is available; pass False when the batches stay on the CPU.
    """
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    length = len(dataset)
    if train:
        per_rank = math.ceil(length / world_size)
        if drop_last is None:
            drop_last = per_rank >= batch_size
        if world_size > 1:
            sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                         seed=int(seed), drop_last=False)
            shuffle = None
        else:
            sampler, shuffle = None, True
    else:
        drop_last = False
        sampler = ShardSampler(length, rank, world_size) if world_size > 1 else None
        shuffle = False
    return SeededLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=max(0, int(workers)),
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=bool(drop_last),
        seed=seed,
        rank=rank,
    )


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Set the epoch that seeds the next pass of ``loader`` (shuffle order and worker augmentation)."""
    if isinstance(loader, SeededLoader):
        loader.set_epoch(epoch)
    elif isinstance(getattr(loader, "sampler", None), DistributedSampler):
        loader.sampler.set_epoch(epoch)


def to_device(
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device | str,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a uint8 batch to ``device``, then make float images in [0, 1] and int64 labels there
    (channels-last images with ``channels_last``: the layout is set on the uint8 batch, so the
    float conversion writes NHWC directly instead of converting and then copying)."""
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    images = images.float().div_(255.0)
    return images, labels.to(device, non_blocking=True).long()
