"""A small offline stand-in with the CIFAR-10 / CIFAR-100 hub schema, for tests and smoke runs.

It is NOT CIFAR: its images are the packaged Fashion-MNIST subset made RGB
and padded to 32x32. It exists so that the hub path (``dataset="cifar10"`` or
``"cifar100"``) can be exercised end to end without a network: written as
parquet files in the layout ``datasets.load_dataset`` reads from a local
folder, it loads through the very code that loads the hub datasets.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flwr_pfedrlnas.data.sources import CIFAR10_CLASSES, EMBEDDED_NPZ, dataset_info

if TYPE_CHECKING:  # imported lazily at run time: `datasets` is slow to import
    import datasets

__all__ = [
    "CIFAR_SCHEMA_NUM_CLASSES",
    "cifar_schema_dataset",
    "cifar_schema_images",
    "save_cifar_schema",
]

CIFAR_SCHEMA_NUM_CLASSES = (10, 100)
"""Accepted ``num_classes``: the CIFAR-10 schema or the CIFAR-100 schema."""

_NATIVE = 28  # side of the embedded images
_SOURCE_CLASSES = 10
_FINE_PER_SOURCE = 10  # CIFAR-100 schema: fine labels per embedded class
_FINE_PER_COARSE = 5  # CIFAR-100: 20 superclasses of 5 classes each


def _check(name: str, value: object, ok: bool, rule: str) -> None:
    if isinstance(value, bool) or not ok:
        raise ValueError(f"{name}={value!r} {rule}")


def _check_arguments(
    num_classes: int, size: int, train_per_class: int | None, test_per_class: int | None, seed: int
) -> None:
    _check(
        "num_classes",
        num_classes,
        num_classes in CIFAR_SCHEMA_NUM_CLASSES,
        f"must be one of {CIFAR_SCHEMA_NUM_CLASSES}",
    )
    _check(
        "size",
        size,
        isinstance(size, int) and size >= _NATIVE and (size - _NATIVE) % 2 == 0,
        f"must be an int >= {_NATIVE} with an even margin (28, 30, 32, ...)",
    )
    for name, value in (("train_per_class", train_per_class), ("test_per_class", test_per_class)):
        if value is not None:
            _check(name, value, isinstance(value, int) and value >= 1, "must be None or >= 1")
    _check("seed", seed, isinstance(seed, int | np.integer) and seed >= 0, "must be an int >= 0")


def cifar_schema_images(gray: np.ndarray, size: int = 32) -> np.ndarray:
    """The stand-in's RGB image of each embedded grayscale image.

    Each ``28x28`` image ``x`` is zero-padded to ``size x size`` (equal
    margins) and its three channels are ``(x, 255 - x, x // 2)``: distinct,
    so that a swapped channel or axis order shows.

    Parameters
    ----------
    gray : np.ndarray
        ``uint8``, ``N x 28 x 28``.
    size : int (default: 32)
        Side of the result (CIFAR: 32).

    Returns
    -------
    np.ndarray
        ``uint8``, ``N x size x size x 3`` (height, width, channel, as PIL).
    """
    gray = np.asarray(gray, dtype=np.uint8)
    if gray.ndim != 3 or gray.shape[1:] != (_NATIVE, _NATIVE):
        raise ValueError(f"gray has shape {gray.shape}, expected N x {_NATIVE} x {_NATIVE}")
    margin = (size - _NATIVE) // 2
    x = np.pad(gray, ((0, 0), (margin, margin), (margin, margin)))
    return np.stack([x, 255 - x, x // 2], axis=-1).astype(np.uint8)


def _fine_labels(labels: np.ndarray) -> np.ndarray:
    """CIFAR-100 schema: the ``k``-th example of embedded class ``c`` gets ``10 c + k % 10``."""
    fine = np.empty_like(labels)
    for c in range(_SOURCE_CLASSES):
        where = np.flatnonzero(labels == c)
        fine[where] = _FINE_PER_SOURCE * c + np.arange(len(where)) % _FINE_PER_SOURCE
    return fine


def _features(num_classes: int, source_names: tuple[str, ...]) -> datasets.Features:
    import datasets

    if num_classes == 10:
        return datasets.Features(
            {"img": datasets.Image(), "label": datasets.ClassLabel(names=list(CIFAR10_CLASSES))}
        )
    fine = [f"{name} {k}" for name in source_names for k in range(_FINE_PER_SOURCE)]
    coarse = [f"superclass {j}" for j in range(len(fine) // _FINE_PER_COARSE)]
    return datasets.Features(
        {
            "img": datasets.Image(),
            "fine_label": datasets.ClassLabel(names=fine),
            "coarse_label": datasets.ClassLabel(names=coarse),
        }
    )


def _split(
    gray: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    size: int,
    per_class: tuple[str, int | None],
    rng: np.random.Generator,
    features: datasets.Features,
) -> datasets.Dataset:
    import datasets

    label = _fine_labels(labels) if num_classes == 100 else labels.astype(np.int64)
    field, count = per_class
    keep = []
    for c in range(num_classes):
        where = np.flatnonzero(label == c)
        if count is not None and count > len(where):
            raise ValueError(
                f"{field}={count} is more than the {len(where)} examples of label {c} "
                f"in the split (num_classes={num_classes})"
            )
        keep.append(where[:count])
    rows = rng.permutation(np.concatenate(keep))  # hub CIFAR rows are not sorted by label
    columns: dict[str, object] = {"img": list(cifar_schema_images(gray[rows], size))}
    if num_classes == 10:
        columns["label"] = label[rows]
    else:
        columns["fine_label"] = label[rows]
        columns["coarse_label"] = label[rows] // _FINE_PER_COARSE
    return datasets.Dataset.from_dict(columns, features=features)


def cifar_schema_dataset(
    num_classes: int = 10,
    size: int = 32,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    seed: int = 0,
) -> datasets.DatasetDict:
    """A stand-in for ``uoft-cs/cifar10`` / ``uoft-cs/cifar100`` made from the embedded images.

    For tests and offline smoke runs only: the images are the packaged
    Fashion-MNIST subset (see :func:`cifar_schema_images`), so accuracies
    mean nothing about CIFAR. What matches the hub datasets is the schema:

    - ``num_classes=10``: columns ``"img"`` (``datasets.Image``, RGB
      ``size x size``) and ``"label"`` (``ClassLabel``, CIFAR-10's 10 names);
      embedded class ``c`` is label ``c``.
    - ``num_classes=100``: ``"img"``, ``"fine_label"`` (``ClassLabel``, 100
      names) and ``"coarse_label"`` (``ClassLabel``, 20 names); the ``k``-th
      example of embedded class ``c`` is fine label ``10 c + k % 10``, and
      its coarse label is ``fine // 5`` (five fine classes per superclass,
      as in CIFAR-100). Names are placeholders (``"Sandal 3"``,
      ``"superclass 7"``).

    Splits ``"train"`` (from the subset's 10,000 train images) and
    ``"test"`` (its 2,000 test images), rows shuffled as on the hub.

    Parameters
    ----------
    num_classes : int (default: 10)
        10 for the CIFAR-10 schema, 100 for the CIFAR-100 schema.
    size : int (default: 32)
        Image side; the 28x28 images are zero-padded to it (>= 28, even margin).
    train_per_class, test_per_class : int or None (default: None)
        Keep the first that many examples of each label (fine label for 100
        classes) in the split; ``None`` keeps all (CIFAR-10 schema: 1,000 and
        200; CIFAR-100 schema: 100 and 20).
    seed : int (default: 0)
        Seed of the row order.

    Returns
    -------
    datasets.DatasetDict
        ``{"train": ..., "test": ...}``.
    """
    import datasets

    _check_arguments(num_classes, size, train_per_class, test_per_class, seed)
    ref = importlib.resources.files("flwr_pfedrlnas").joinpath("data", EMBEDDED_NPZ)
    with ref.open("rb") as fh, np.load(fh) as npz:
        parts = {
            split: (npz[f"{split}_images"], npz[f"{split}_labels"]) for split in ("train", "test")
        }
    features = _features(num_classes, dataset_info("embedded").class_names)
    rng = np.random.default_rng(int(seed))
    per_class = {
        "train": ("train_per_class", train_per_class),
        "test": ("test_per_class", test_per_class),
    }
    return datasets.DatasetDict(
        {
            split: _split(gray, labels, num_classes, size, per_class[split], rng, features)
            for split, (gray, labels) in parts.items()
        }
    )


def save_cifar_schema(
    directory: str | Path,
    num_classes: int = 10,
    size: int = 32,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    seed: int = 0,
) -> Path:
    """Write :func:`cifar_schema_dataset` as a local dataset folder of parquet files.

    The layout is ``<directory>/data/train-00000-of-00001.parquet`` and
    ``.../test-00000-of-00001.parquet``, which ``datasets.load_dataset(directory)``
    (and so flwr-datasets' ``FederatedDataset(dataset=directory)``) reads with
    its features (``Image``, ``ClassLabel``) intact. Point the package at it
    with ``load_source("cifar10", data_dir=directory)`` or the run config
    ``dataset='cifar10' data-dir='<directory>'``.

    Parameters
    ----------
    directory : str or Path
        Folder to write into (created if missing; must not already hold a
        ``data`` folder, so that stale files cannot mix in).
    num_classes, size, train_per_class, test_per_class, seed
        As in :func:`cifar_schema_dataset`.

    Returns
    -------
    Path
        The absolute ``directory``.
    """
    _check_arguments(num_classes, size, train_per_class, test_per_class, seed)
    root = Path(directory).expanduser().resolve()
    if (root / "data").exists():
        raise FileExistsError(f"directory={str(root)!r} already holds a 'data' folder")
    splits = cifar_schema_dataset(num_classes, size, train_per_class, test_per_class, seed)
    (root / "data").mkdir(parents=True)
    for split, dataset in splits.items():
        dataset.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root
