"""The embedded Fashion-MNIST subset as a Hugging Face ``datasets.Dataset``."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

from flwr_pfedrlnas.data.sources import load_source

if TYPE_CHECKING:  # imported lazily at run time: `datasets` is slow to import
    import datasets

__all__ = ["EMBEDDED_CHANNELS", "embedded_dataset", "embedded_permutation"]

EMBEDDED_CHANNELS = (1, 3)
"""Accepted values of ``channels``: grayscale (``"L"``) or replicated RGB."""


def _check_arguments(channels: int, shuffle_seed: int) -> None:
    if isinstance(channels, bool) or channels not in EMBEDDED_CHANNELS:
        raise ValueError(f"channels={channels!r} must be one of {EMBEDDED_CHANNELS}")
    if (
        isinstance(shuffle_seed, bool)
        or not isinstance(shuffle_seed, int | np.integer)
        or shuffle_seed < 0
    ):
        raise ValueError(f"shuffle_seed={shuffle_seed!r} must be an int >= 0")


def embedded_permutation(shuffle_seed: int = 42) -> np.ndarray:
    """Row ``i`` of :func:`embedded_dataset` is example ``perm[i]`` of the pool.

    The pool is ``load_source("embedded")``: the packaged subset's train
    images then its test images, sorted by label within each.

    Parameters
    ----------
    shuffle_seed : int (default: 42)
        The seed given to :func:`embedded_dataset`.

    Returns
    -------
    np.ndarray
        ``int64`` permutation of ``range(12_000)``:
        ``numpy.random.default_rng(shuffle_seed).permutation(12_000)``.
    """
    _check_arguments(1, shuffle_seed)
    return np.random.default_rng(int(shuffle_seed)).permutation(len(load_source("embedded")))


@functools.lru_cache(maxsize=4)
def _embedded_dataset_cached(channels: int, shuffle_seed: int) -> datasets.Dataset:
    import datasets

    pool = load_source("embedded")
    perm = embedded_permutation(shuffle_seed)
    images = pool.images[perm, 0]  # N x 28 x 28, uint8
    if channels == 3:
        images = np.repeat(images[..., None], 3, axis=-1)  # N x 28 x 28 x 3: mode "RGB"
    features = datasets.Features(
        {
            "img": datasets.Image(),
            "label": datasets.ClassLabel(names=list(pool.info.class_names)),
        }
    )
    return datasets.Dataset.from_dict(
        {"img": list(images), "label": pool.labels[perm]}, features=features
    )


def embedded_dataset(channels: int = 1, shuffle_seed: int = 42) -> datasets.Dataset:
    """The packaged Fashion-MNIST subset as a shuffled ``datasets.Dataset``.

    12,000 rows: the 1,000 images per class from the official Fashion-MNIST
    train split and the 200 per class from its test split that ship in the
    package, pooled (the pool of ``load_source("embedded")``) and shuffled,
    so that every flwr-datasets partitioner (``IidPartitioner``,
    ``DirichletPartitioner``, ...) can take it as is
    (``partitioner.dataset = embedded_dataset()``). Row ``i`` is pool example
    ``embedded_permutation(shuffle_seed)[i]``.

    Columns, named as in the CIFAR-10 hub dataset:

    - ``"img"``: ``datasets.Image``; decodes to a 28x28 PIL image, mode
      ``"L"`` (1 channel) for ``channels=1``, ``"RGB"`` (the gray value
      copied into all three channels) for ``channels=3``. Pixels are the
      original ``uint8`` values: no padding, no normalisation (the package's
      own loaders pad to 32x32 and normalise; see ``load_client_data``).
    - ``"label"``: ``datasets.ClassLabel`` with the 10 Fashion-MNIST class
      names (``"T-shirt/top"``, ..., ``"Ankle boot"``).

    The result is cached per process for each ``(channels, shuffle_seed)``;
    ``datasets.Dataset`` methods return new datasets, so the cached one is
    never changed by its users.

    Parameters
    ----------
    channels : int (default: 1)
        1 for grayscale images, 3 for RGB ones (for models built for CIFAR).
    shuffle_seed : int (default: 42)
        Seed of the row order (``numpy.random.default_rng``), >= 0.

    Returns
    -------
    datasets.Dataset
        12,000 rows, columns ``"img"`` and ``"label"``.

    Raises
    ------
    ValueError
        ``channels`` not 1 or 3, or ``shuffle_seed`` not an int >= 0.
    """
    _check_arguments(channels, shuffle_seed)
    return _embedded_dataset_cached(int(channels), int(shuffle_seed))
