"""Dirichlet partitions of a source, each client's train / test split, and loaders."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from flwr_pfedrlnas.data.hub import (
    HUB_SPECS,
    INDEX_COLUMN,
    federated_dataset,
    hub_error,
    local_folder_error,
)
from flwr_pfedrlnas.data.sources import (  # re-exported: the data layer's one entry point
    DEBIAN_FASHION_MNIST_DIR,
    EMBEDDED_NPZ,
    SOURCES,
    DatasetInfo,
    SourceData,
    check_source,
    dataset_info,
    load_source,
    resolve_data_dir,
)

if TYPE_CHECKING:  # imported lazily at run time: `datasets` is slow to import
    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR",
    "EMBEDDED_NPZ",
    "MIN_PARTITION_SIZE",
    "SOURCES",
    "ClientData",
    "DatasetInfo",
    "SourceData",
    "dataset_info",
    "label_distribution",
    "load_client_data",
    "load_source",
    "make_loaders",
    "make_val_loader",
    "partition_indices",
]

MIN_PARTITION_SIZE = 10  # DirichletPartitioner resamples until every client has this


@dataclass
class ClientData:
    """One client's train, validation and test split, ready for a model.

    Attributes
    ----------
    train_x, val_x, test_x : np.ndarray
        ``float32``, ``N x C x H x W``, padded to ``resolution`` and normalised.
    train_y, val_y, test_y : np.ndarray
        ``int64`` labels.
    num_classes, in_channels, resolution : int
        What the model has to accept and predict.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    in_channels: int
    resolution: int
    val_x: np.ndarray | None = None
    val_y: np.ndarray | None = None

    @property
    def num_val(self) -> int:
        """Number of validation examples (0: no validation split)."""
        return 0 if self.val_y is None else len(self.val_y)

    @property
    def num_train(self) -> int:
        """Number of training examples."""
        return len(self.train_y)

    @property
    def num_test(self) -> int:
        """Number of test examples."""
        return len(self.test_y)


# ---------------------------------------------------------------- partitioning
def _dirichlet(
    num_partitions: int, label_column: str, alpha: float, seed: int
) -> DirichletPartitioner:
    from flwr_datasets.partitioner import DirichletPartitioner

    return DirichletPartitioner(
        num_partitions=num_partitions,
        partition_by=label_column,
        alpha=alpha,
        min_partition_size=MIN_PARTITION_SIZE,
        self_balancing=False,
        shuffle=True,
        seed=seed,
    )


def _check_partitioning(num_partitions: int, alpha: float, seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed={seed!r} must be an int >= 0")
    if isinstance(num_partitions, bool) or not isinstance(num_partitions, int):
        raise TypeError(f"num_partitions={num_partitions!r} must be an int")
    if num_partitions < 1:
        raise ValueError(f"num_partitions={num_partitions} must be >= 1")
    if not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha={alpha!r} must be a finite number > 0")


def _index_column(partition: datasets.Dataset) -> np.ndarray:
    # Whole-column slice: iterating a datasets 4 Column formats row by row (slow).
    column = partition.select_columns([INDEX_COLUMN]).with_format("numpy")[:][INDEX_COLUMN]
    return np.asarray(column, dtype=np.int64)


@functools.lru_cache(maxsize=16)
def _partition_cached(
    source: str, data_dir: str | None, num_partitions: int, alpha: float, seed: int
) -> tuple[np.ndarray, ...]:
    import datasets

    pool = load_source(source, data_dir)
    if num_partitions * MIN_PARTITION_SIZE > len(pool):
        raise ValueError(
            f"num_partitions={num_partitions} is too many for source={source!r}: "
            f"{len(pool)} examples < {MIN_PARTITION_SIZE} per partition"
        )
    if source in HUB_SPECS:
        partitioner = _dirichlet(num_partitions, HUB_SPECS[source].label_column, alpha, seed)
        fds = federated_dataset(source, partitioner, data_dir)
        try:
            fds.load_partition(0, "train")  # loads the split, assigns partitioner
        except OSError as exc:
            if data_dir is not None:
                raise local_folder_error(source, data_dir, exc) from exc
            raise hub_error(source, HUB_SPECS[source], exc) from exc
    else:
        partitioner = _dirichlet(num_partitions, "label", alpha, seed)
        partitioner.dataset = datasets.Dataset.from_dict(
            {"label": pool.labels, INDEX_COLUMN: np.arange(len(pool), dtype=np.int64)}
        )
    try:
        parts = tuple(
            _index_column(partitioner.load_partition(pid)) for pid in range(num_partitions)
        )
    except ValueError as exc:
        raise ValueError(
            f"alpha={alpha} with num_partitions={num_partitions} on "
            f"source={source!r}: the Dirichlet partitioner could not give every "
            f"partition {MIN_PARTITION_SIZE} examples ({exc}); raise alpha or "
            "lower num_partitions"
        ) from exc
    for part in parts:
        part.flags.writeable = False
    return parts


def partition_indices(
    source: str,
    num_partitions: int,
    alpha: float,
    seed: int,
    data_dir: str | None = None,
) -> tuple[np.ndarray, ...]:
    """Split a source's pool over ``num_partitions`` clients, Dirichlet over labels.

    Every source goes through flwr-datasets' ``DirichletPartitioner`` (by label,
    ``alpha``, ``seed``, ``min_partition_size=10``, ``self_balancing=False``):
    local sources by handing it a ``datasets.Dataset`` of the pooled labels,
    hub sources through ``FederatedDataset(partitioners={"train": ...})``.
    The result is cached per process.

    Parameters
    ----------
    source, data_dir
        As in :func:`load_source`.
    num_partitions : int
        Number of clients ``K``.
    alpha : float
        Dirichlet concentration; small = skewed label mixes, large = near IID.
    seed : int
        Seed of the partitioner.

    Returns
    -------
    tuple of np.ndarray
        For each client, the (read-only, ``int64``) positions of its examples in
        ``load_source(source, data_dir)``; disjoint, together covering the pool.
    """
    check_source(source)
    _check_partitioning(num_partitions, alpha, seed)
    data_dir = resolve_data_dir(source, data_dir)
    return _partition_cached(source, data_dir, int(num_partitions), float(alpha), int(seed))


def _stratified_split(
    labels: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the train and test examples, the same label mix in both."""
    train, test = [], []
    counts = {}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(np.floor(test_fraction * len(idx) + 0.5))
        counts[c] = len(idx)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    train_idx, test_idx = np.concatenate(train), np.concatenate(test)
    if len(test_idx) == 0 and len(train_idx) > 1:  # tiny partition: keep 1 to test
        largest = max(counts, key=counts.__getitem__)
        pos = np.flatnonzero(labels[train_idx] == largest)[0]
        test_idx = train_idx[pos : pos + 1]
        train_idx = np.delete(train_idx, pos)
    return rng.permutation(train_idx), rng.permutation(test_idx)


def _prepare(images: np.ndarray, info: DatasetInfo) -> np.ndarray:
    x = images.astype(np.float32) / 255.0
    pad = (info.resolution - info.image_size) // 2
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))  # zero = background
    mean = np.asarray(info.mean, dtype=np.float32)[None, :, None, None]
    std = np.asarray(info.std, dtype=np.float32)[None, :, None, None]
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def load_client_data(
    source: str,
    partition_id: int,
    num_partitions: int,
    alpha: float,
    seed: int,
    test_fraction: float = 0.2,
    data_dir: str | None = None,
    val_fraction: float = 0.0,
) -> ClientData:
    """One client's train / validation / test data of a Dirichlet-partitioned source.

    The pool (see :func:`load_source`) is split over ``num_partitions``
    clients by :func:`partition_indices`; this client's partition is then
    split into train and test stratified by label (each class contributes
    ``round(test_fraction * n_class)`` examples to test), so its test split
    has the label mix of its train split. Images are scaled to [0, 1],
    zero-padded to 32x32 (Fashion-MNIST: 28 -> 32, so that the same 32x32
    models fit every source; CIFAR stays 32) and normalised with the
    dataset's per-channel mean / std. Pool and partitioning are cached per
    process, so a simulation may call this for every client and round.

    Parameters
    ----------
    source, data_dir
        As in :func:`load_source`.
    partition_id : int
        This client, in ``[0, num_partitions)``.
    num_partitions, alpha, seed
        As in :func:`partition_indices`; ``seed`` also seeds the split.
    test_fraction : float, default 0.2
        Share of each class held out for testing, in ``(0, 1)``.
    val_fraction : float, default 0.0
        Share of each class of the partition held out for validation, in
        ``[0, 1 - test_fraction)``: the split the search's reward may see,
        neither trained on nor reported. It comes out of the training part
        (stratified the same way), so the test split is exactly as large as
        without it; 0 gives no validation split.

    Returns
    -------
    ClientData
    """
    _check_partitioning(num_partitions, alpha, seed)
    if isinstance(partition_id, bool) or not isinstance(partition_id, int | np.integer):
        raise TypeError(f"partition_id={partition_id!r} must be an int")
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"partition_id={partition_id} is outside [0, {num_partitions}) "
            f"(num_partitions={num_partitions})"
        )
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction!r} must be in (0, 1)")
    if not 0.0 <= val_fraction < 1.0 - test_fraction:
        raise ValueError(
            f"val_fraction={val_fraction!r} must be in [0, 1 - test_fraction) "
            f"(test_fraction={test_fraction!r})"
        )
    pool = load_source(source, data_dir)
    idx = partition_indices(source, num_partitions, alpha, seed, data_dir)
    idx = idx[int(partition_id)]
    labels = pool.labels[idx]
    rng = np.random.default_rng([seed, int(partition_id)])
    train_pos, test_pos = _stratified_split(labels, test_fraction, rng)
    val_pos = None
    if val_fraction > 0:
        # The share of the whole partition, taken from what is left after the test split.
        keep, held = _stratified_split(labels[train_pos], val_fraction / (1.0 - test_fraction), rng)
        train_pos, val_pos = train_pos[keep], train_pos[held]
    info = pool.info
    return ClientData(
        train_x=_prepare(pool.images[idx[train_pos]], info),
        train_y=labels[train_pos].copy(),
        test_x=_prepare(pool.images[idx[test_pos]], info),
        test_y=labels[test_pos].copy(),
        num_classes=info.num_classes,
        in_channels=info.channels,
        resolution=info.resolution,
        val_x=None if val_pos is None else _prepare(pool.images[idx[val_pos]], info),
        val_y=None if val_pos is None else labels[val_pos].copy(),
    )


def make_loaders(
    client_data: ClientData, batch_size: int, seed: int
) -> tuple[DataLoader, DataLoader]:
    """Torch loaders over a client's data.

    Parameters
    ----------
    client_data : ClientData
        From :func:`load_client_data`.
    batch_size : int
        Examples per batch (> 0).
    seed : int
        Seeds the shuffling of the train loader (the test loader is in order).

    Returns
    -------
    (DataLoader, DataLoader)
        Train loader (shuffled) and test loader, ``num_workers=0``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise TypeError(f"batch_size={batch_size!r} must be an int")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    train = TensorDataset(
        torch.from_numpy(client_data.train_x), torch.from_numpy(client_data.train_y)
    )
    test = TensorDataset(torch.from_numpy(client_data.test_x), torch.from_numpy(client_data.test_y))
    generator = torch.Generator().manual_seed(int(seed))
    train_loader = DataLoader(
        train, batch_size=batch_size, shuffle=True, generator=generator, num_workers=0
    )
    test_loader = DataLoader(test, batch_size=batch_size, shuffle=False, num_workers=0)
    return train_loader, test_loader


def make_val_loader(client_data: ClientData, batch_size: int) -> DataLoader | None:
    """The loader of a client's validation split, in order; ``None`` when it has none."""
    if client_data.num_val == 0:
        return None
    val = TensorDataset(torch.from_numpy(client_data.val_x), torch.from_numpy(client_data.val_y))
    return DataLoader(val, batch_size=int(batch_size), shuffle=False, num_workers=0)


def label_distribution(partition_labels: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """Per-client label histograms.

    Parameters
    ----------
    partition_labels : sequence of np.ndarray
        Each client's labels (e.g. ``pool.labels[idx]`` for every ``idx`` of
        :func:`partition_indices`).
    num_classes : int
        Number of labels.

    Returns
    -------
    np.ndarray
        ``int64``, ``K x num_classes``: row ``i`` counts client ``i``'s labels.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes} must be >= 1")
    hist = np.zeros((len(partition_labels), num_classes), dtype=np.int64)
    for i, labels in enumerate(partition_labels):
        labels = np.asarray(labels, dtype=np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"partition_labels[{i}] has labels outside [0, {num_classes})")
        hist[i] = np.bincount(labels, minlength=num_classes)
    return hist
