"""Hugging Face datasets (the hub, or a local folder of the same files) through flwr-datasets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported lazily at run time: `datasets` is slow to import
    import datasets
    from flwr_datasets import FederatedDataset
    from flwr_datasets.partitioner import Partitioner

__all__ = [
    "HUB_SPECS",
    "INDEX_COLUMN",
    "HubSpec",
    "check_columns",
    "federated_dataset",
    "hub_error",
    "hub_to_arrays",
    "load_hub_split",
    "local_folder_error",
]

INDEX_COLUMN = "pool_index"  # column carrying a row's position in the pooled arrays


@dataclass(frozen=True)
class HubSpec:
    """Where a hub source lives and which columns hold its images and labels."""

    path: str
    image_column: str
    label_column: str


HUB_SPECS: dict[str, HubSpec] = {
    "cifar10": HubSpec("uoft-cs/cifar10", "img", "label"),
    "cifar100": HubSpec("uoft-cs/cifar100", "img", "fine_label"),
    "fashion-mnist": HubSpec("zalando-datasets/fashion_mnist", "image", "label"),
}


def hub_error(source: str, spec: HubSpec, exc: BaseException) -> ConnectionError:
    """The error for a hub dataset that cannot be loaded, with the offline ways out."""
    return ConnectionError(
        f"source={source!r}: could not load the Hugging Face dataset "
        f"{spec.path!r}; the hub is unreachable (offline?) or the dataset is not "
        "available. Without a network use source='embedded' (the bundled "
        "Fashion-MNIST subset) or source='fashion-mnist-idx' with data_dir=<folder "
        f"of Fashion-MNIST IDX files>, or keep source={source!r} with data_dir=<a "
        f"local folder of the dataset's files>. Cause: {type(exc).__name__}: {exc}"
    )


def _add_index(dataset_dict: datasets.DatasetDict) -> datasets.DatasetDict:
    train = dataset_dict["train"]
    dataset_dict["train"] = train.add_column(INDEX_COLUMN, np.arange(train.num_rows))
    return dataset_dict


def federated_dataset(
    source: str, partitioner: Partitioner, data_dir: str | None = None
) -> FederatedDataset:
    """The hub dataset as a FederatedDataset whose train split gets ``partitioner``.

    ``data_dir`` (a local folder of the dataset's files, e.g. parquet) replaces
    the hub id: ``datasets.load_dataset`` reads either, so both go through
    this one call. The split is not shuffled (``shuffle=False``) and every row
    carries its position in that split, so partitions index straight into
    ``load_source``'s pooled arrays.
    """
    from flwr_datasets import FederatedDataset

    return FederatedDataset(
        dataset=data_dir or HUB_SPECS[source].path,
        partitioners={"train": partitioner},
        preprocessor=_add_index,
        shuffle=False,
    )


def hub_to_arrays(train: datasets.Dataset, spec: HubSpec) -> tuple[np.ndarray, np.ndarray]:
    """Images as ``N x C x H x W`` (from PIL's ``H x W`` or ``H x W x C``) and labels."""
    images, labels = [], []
    columns = [spec.image_column, spec.label_column]
    for batch in train.select_columns(columns).with_format("numpy").iter(1000):
        img = np.asarray(batch[spec.image_column], dtype=np.uint8)
        img = img[:, None] if img.ndim == 3 else img.transpose(0, 3, 1, 2)
        images.append(img)
        labels.append(np.asarray(batch[spec.label_column]))
    return np.concatenate(images), np.concatenate(labels)


def local_folder_error(source: str, data_dir: str, exc: BaseException) -> ValueError:
    """The error for a local folder that ``datasets.load_dataset`` cannot read."""
    return ValueError(
        f"source={source!r} with data_dir={data_dir!r}: datasets.load_dataset could "
        "not read a 'train' split from the folder (expected data files such as "
        f"data/train-00000-of-00001.parquet). Cause: {type(exc).__name__}: {exc}"
    )


def check_columns(source: str, data_dir: str | None, train: datasets.Dataset) -> None:
    """Raise ``ValueError`` naming the missing columns of the source's schema."""
    spec = HUB_SPECS[source]
    missing = [c for c in (spec.image_column, spec.label_column) if c not in train.column_names]
    if missing:
        where = f"data_dir={data_dir!r}" if data_dir else f"the hub dataset {spec.path!r}"
        raise ValueError(
            f"source={source!r}: {where} has no column(s) {missing}; its columns are "
            f"{train.column_names} (the {source} schema needs {spec.image_column!r} and "
            f"{spec.label_column!r})"
        )


def load_hub_split(source: str, data_dir: str | None = None) -> datasets.Dataset:
    """The train split of a hub source (or of the local folder ``data_dir``), unshuffled.

    Raises ``ConnectionError`` when the hub cannot be reached, ``ValueError``
    naming the folder when ``data_dir`` holds no readable ``train`` split,
    and ``ValueError`` naming the columns when the schema's are missing.
    """
    from flwr_datasets.partitioner import IidPartitioner

    spec = HUB_SPECS[source]
    try:
        train = federated_dataset(source, IidPartitioner(1), data_dir).load_split("train")
    except (OSError, ValueError) as exc:  # ConnectionError, DatasetNotFoundError, HTTP errors
        if data_dir is not None:
            raise local_folder_error(source, data_dir, exc) from exc
        if isinstance(exc, ValueError):
            raise
        raise hub_error(source, spec, exc) from exc
    check_columns(source, data_dir, train)
    return train
