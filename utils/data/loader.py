"""Data loaders whose order and augmentation are pure functions of the seed, the epoch and the sample.

:func:`build_loader` gives the loader of a split (training shuffles, validation keeps order;
:class:`ShardSampler` / ``DistributedSampler`` under torchrun), :func:`set_loader_epoch` picks
the epoch of the next pass, and :func:`to_device` turns a batch into normalised float images
(/255, or per-band statistics) and int64 labels on the device.

The shuffle order of an epoch comes from (seed, rank, epoch) (:func:`order_seed`); the
augmentation of a sample from (seed, epoch, index) alone (:func:`sample_rng`): the sampler sends
each worker ``(epoch, index)`` keys, and the worker builds that sample's generator. Nothing
depends on which worker loads a sample or on how many there are, so the workers are kept
across epochs (persistent workers: no fork, no refilled pipeline, no copy-on-write faults
in the training process at every epoch) and a resumed run still draws bitwise the same samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, SequentialSampler

from utils.data.normalize import Normalization
from utils.errors import UserError

# First word of every sample's seed: keeps the augmentation streams apart from the other streams
# seeded from (seed, ...) words, e.g. dropout's (seed, rank, epoch) in utils.training.epoch.
_SAMPLE_STREAM = 0x73616D70  # "samp"
_ORDER_STREAM = 0x6F726472  # "ordr"
_WORKERS_STREAM = 0x776F726B  # "work"
_MASK64 = (1 << 64) - 1


def sample_seed(seed: int, epoch: int, index: int) -> np.random.SeedSequence:
    """Seed sequence of one sample's augmentation in one epoch: distinct for every (seed, epoch, index).

    The rank is not part of it: the samplers give each rank distinct indices (DistributedSampler
    repeats at most ``world_size - 1`` of them to even out the shards), and leaving it out makes a
    sample's augmentation the same whichever rank, worker or world size draws it.
    """
    return np.random.SeedSequence([_SAMPLE_STREAM, int(seed) & _MASK64, int(epoch), int(index)])


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator that augments sample ``index`` in ``epoch`` (see :func:`sample_seed`)."""
    return np.random.default_rng(sample_seed(seed, epoch, index))


def _seed63(*words: int) -> int:
    """A non-negative 63-bit seed (what torch.Generator takes) from ``words``."""
    return int(np.random.SeedSequence([int(word) & _MASK64 for word in words]).generate_state(1, np.uint64)[0] >> 1)


def order_seed(seed: int, rank: int, epoch: int) -> int:
    """Seed of the shuffle order of ``epoch`` on ``rank``."""
    return _seed63(_ORDER_STREAM, seed, rank, epoch)


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank`` in order: no shuffling, no padding, no duplicates."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` for every index of ``inner``: tells the worker which epoch a sample is for.

    The main process iterates the sampler when a pass starts, so setting ``epoch`` before that
    reaches persistent workers without restarting them.
    """

    def __init__(self, inner: Sampler[int]) -> None:
        self.inner = inner
        self.epoch = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((epoch, int(index)) for index in self.inner)

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]


class KeyedSamples(Dataset):
    """``dataset`` indexed by ``(epoch, index)`` keys: each sample gets its own generator from :func:`sample_rng`.

    A dataset with ``sample(index, rng)`` (:class:`utils.data.dataset.SegmentationDataset`) is
    called with that generator; any other is indexed plainly (it has no augmentation to seed).
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self._sample = getattr(dataset, "sample", None)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if self._sample is None:
            return self.dataset[index]
        return self._sample(index, sample_rng(self.seed, epoch, index))


def _plain_worker_errors(batches: Iterator[Any]) -> Iterator[Any]:
    """Re-raise a worker's UserError with its own message, without the worker traceback torch adds."""
    try:
        yield from batches
    except UserError as exc:
        text = str(exc)
        if "DataLoader worker" not in text or "UserError: " not in text:
            raise
        raise UserError(text.rsplit("UserError: ", 1)[-1].strip()) from None


class SeededLoader(DataLoader):
    """DataLoader whose order is a function of (seed, rank, epoch) and each sample of (seed, epoch, index).

    Call :func:`set_loader_epoch` before each epoch; an epoch that is iterated a second time
    without it advances to the next epoch on its own, so augmentations never repeat by mistake.
    With workers they persist across passes (:meth:`release_workers` ends them); ``source`` is
    the dataset given (``dataset`` is its :class:`KeyedSamples` wrapper).
    """

    def __init__(self, dataset: Dataset, *, seed: int, rank: int, shuffle: bool,
                 sampler: Sampler[int] | None = None, **kwargs: Any) -> None:
        self.seed, self.rank = int(seed), int(rank)
        self.source = dataset
        self.shuffle_generator = torch.Generator()
        if sampler is None:
            indices = range(len(dataset))  # type: ignore[arg-type]
            sampler = (RandomSampler(indices, generator=self.shuffle_generator) if shuffle
                       else SequentialSampler(indices))
        self.epoch_sampler = EpochSampler(sampler)
        # The iterator draws the workers' base seed (their global random/numpy/torch seeds, for
        # third-party code; the augmentation does not use them) from this generator, not from the
        # training process's global one, whose stream (dropout) must not depend on the loader.
        workers_generator = torch.Generator().manual_seed(_seed63(_WORKERS_STREAM, self.seed, self.rank))
        kwargs.setdefault("persistent_workers", kwargs.get("num_workers", 0) > 0)
        super().__init__(KeyedSamples(dataset, self.seed), sampler=self.epoch_sampler,
                         generator=workers_generator, **kwargs)
        self.epoch = 0
        self._epoch_used = False

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch``."""
        self.epoch = int(epoch)
        self._epoch_used = False

    def release_workers(self) -> None:
        """End the persistent worker processes (the next pass starts new ones); a no-op without any."""
        iterator, self._iterator = self._iterator, None
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()

    def __iter__(self) -> Iterator[Any]:
        if self._epoch_used:
            self.set_epoch(self.epoch + 1)
        self._epoch_used = True
        self.shuffle_generator.manual_seed(order_seed(self.seed, self.rank, self.epoch))
        self.epoch_sampler.epoch = self.epoch
        if isinstance(self.epoch_sampler.inner, DistributedSampler):
            self.epoch_sampler.inner.set_epoch(self.epoch)
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
    Workers persist across epochs; see :func:`set_loader_epoch` for what seeds a pass.
    ``pin_memory`` defaults to whether CUDA is available; pass False when the batches stay on the CPU.
    """
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    length = len(dataset)  # type: ignore[arg-type]
    sampler: Sampler[int] | None = None
    if train:
        per_rank = math.ceil(length / world_size)
        if drop_last is None:
            drop_last = per_rank >= batch_size
        if world_size > 1:
            sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                         seed=int(seed), drop_last=False)
    else:
        drop_last = False
        if world_size > 1:
            sampler = ShardSampler(length, rank, world_size)
    return SeededLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        sampler=sampler,
        num_workers=max(0, int(workers)),
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=bool(drop_last),
        seed=seed,
        rank=rank,
    )


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Set the epoch of the next pass of ``loader``: its shuffle order and every sample's augmentation."""
    if isinstance(loader, SeededLoader):
        loader.set_epoch(epoch)
    elif isinstance(getattr(loader, "sampler", None), DistributedSampler):
        loader.sampler.set_epoch(epoch)


def release_other_workers(loaders: Iterable[DataLoader], keep: DataLoader) -> None:
    """End the persistent workers of every loader in ``loaders`` but ``keep`` (e.g. the other training phase's)."""
    for loader in loaders:
        if loader is not keep and isinstance(loader, SeededLoader):
            loader.release_workers()


def to_device(
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device | str,
    channels_last: bool = False,
    normalization: Normalization | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a batch (uint8, or a raster's dtype) to ``device``, then make float images normalised by
    ``normalization`` (None: 8-bit /255, in [0, 1]) and int64 labels there (channels-last images with
    ``channels_last``: the layout is set on the raw batch, so the float conversion writes NHWC directly
    instead of converting and then copying)."""
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    images = (normalization or Normalization()).apply(images)
    return images, labels.to(device, non_blocking=True).long()
