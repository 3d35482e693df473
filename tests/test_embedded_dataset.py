"""The embedded data as a ``datasets.Dataset``: schema, exact round trip, partitioners."""

from __future__ import annotations

import importlib.resources

import datasets as hf_datasets
import numpy as np
import pytest
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    ExponentialPartitioner,
    IidPartitioner,
    InnerDirichletPartitioner,
    LinearPartitioner,
    PathologicalPartitioner,
    ShardPartitioner,
    SizePartitioner,
    SquarePartitioner,
)
from torchvision.datasets import FashionMNIST

from flwr_pfedrlnas.data import embedded_dataset, embedded_permutation

N = 12_000
# The published class names, as torchvision's loader of the dataset has them.
FASHION_NAMES = list(FashionMNIST.classes)


def _npz_pool() -> tuple[np.ndarray, np.ndarray]:
    """The packaged file read directly (not through the package's loaders)."""
    ref = importlib.resources.files("flwr_pfedrlnas").joinpath("data", "fashion_mnist_subset.npz")
    with ref.open("rb") as fh, np.load(fh) as npz:
        images = np.concatenate([npz["train_images"], npz["test_images"]])
        labels = np.concatenate([npz["train_labels"], npz["test_labels"]])
    return images, labels.astype(np.int64)


def _arrays(ds: hf_datasets.Dataset) -> tuple[np.ndarray, np.ndarray]:
    table = ds.with_format("numpy")[:]
    return np.asarray(table["img"]), np.asarray(table["label"])


def _sorted_rows(images: np.ndarray, labels: np.ndarray) -> list[tuple[int, bytes]]:
    return sorted((int(y), x.tobytes()) for x, y in zip(images, labels))


@pytest.fixture(scope="module")
def gray():
    return embedded_dataset()


@pytest.fixture(scope="module")
def gray_rows(gray):
    """Every row of the default dataset as (label, pixel bytes), decoded once."""
    images, labels = _arrays(gray)
    return {(int(y), x.tobytes()) for x, y in zip(images, labels)}


def test_schema_columns_features_and_size(gray):
    assert gray.num_rows == N
    assert gray.column_names == ["img", "label"]
    assert isinstance(gray.features["img"], hf_datasets.Image)
    assert isinstance(gray.features["label"], hf_datasets.ClassLabel)
    assert gray.features["label"].names == FASHION_NAMES
    first = gray[0]["img"]
    assert first.mode == "L" and first.size == (28, 28)
    rgb = embedded_dataset(channels=3)[0]["img"]
    assert rgb.mode == "RGB" and rgb.size == (28, 28)


def test_pixels_and_labels_round_trip_against_the_npz_exactly(gray):
    npz_images, npz_labels = _npz_pool()
    images, labels = _arrays(gray)
    assert images.dtype == np.uint8 and images.shape == (N, 28, 28)
    # The documented order: row i is pool example permutation[i] ...
    perm = embedded_permutation(42)
    assert np.array_equal(perm, np.random.default_rng(42).permutation(N))
    assert np.array_equal(images, npz_images[perm])
    assert np.array_equal(labels, npz_labels[perm])
    # ... and, whatever the order, the same multiset of (label, pixels) as the file.
    assert _sorted_rows(images, labels) == _sorted_rows(npz_images, npz_labels)


def test_rgb_copies_the_gray_value_into_every_channel(gray):
    rgb_images, rgb_labels = _arrays(embedded_dataset(channels=3, shuffle_seed=42))
    gray_images, gray_labels = _arrays(gray)
    assert rgb_images.shape == (N, 28, 28, 3)
    for c in range(3):
        assert np.array_equal(rgb_images[..., c], gray_images)
    assert np.array_equal(rgb_labels, gray_labels)


def test_rows_are_shuffled_by_the_seed(gray):
    labels = np.asarray(gray["label"])
    assert np.array_equal(labels, np.asarray(embedded_dataset(shuffle_seed=42)["label"]))
    other = np.asarray(embedded_dataset(shuffle_seed=7)["label"])
    assert not np.array_equal(labels, other)
    assert np.array_equal(np.bincount(other), np.full(10, 1200))
    # Not sorted by label any more: the first 1,200 rows hold every class.
    assert len(np.unique(labels[:1200])) == 10


def test_iid_partition_holds_every_class_where_the_sorted_pool_did_not(gray):
    partitioner = IidPartitioner(num_partitions=10)
    partitioner.dataset = gray
    for pid in range(10):
        counts = np.bincount(np.asarray(partitioner.load_partition(pid)["label"]), minlength=10)
        assert counts.sum() == 1200
        assert (counts > 0).all(), (pid, counts)
    # The reason for the shuffle: the same partitioner on the label-sorted pool.
    _, npz_labels = _npz_pool()
    sorted_pool = hf_datasets.Dataset.from_dict({"label": npz_labels})
    unshuffled = IidPartitioner(num_partitions=10)
    unshuffled.dataset = sorted_pool
    classes = [len(np.unique(unshuffled.load_partition(pid)["label"])) for pid in range(10)]
    assert sum(c <= 2 for c in classes) >= 8  # train part: 2 classes each; the seam more


def _partitioners():
    return [
        IidPartitioner(num_partitions=10),
        DirichletPartitioner(num_partitions=10, partition_by="label", alpha=0.3, seed=0),
        InnerDirichletPartitioner(partition_sizes=[1200] * 10, partition_by="label", alpha=0.5),
        ShardPartitioner(
            num_partitions=10, partition_by="label", num_shards_per_partition=2, shard_size=600
        ),
        PathologicalPartitioner(
            num_partitions=10, partition_by="label", num_classes_per_partition=2
        ),
        LinearPartitioner(num_partitions=5),
        SquarePartitioner(num_partitions=5),
        ExponentialPartitioner(num_partitions=5),
        SizePartitioner(partition_sizes=[6000, 4000, 2000]),
    ]


@pytest.mark.parametrize("partitioner", _partitioners(), ids=lambda p: type(p).__name__)
def test_every_flwr_datasets_partitioner_takes_it(gray, gray_rows, partitioner):
    partitioner.dataset = gray
    key = gray_rows
    assert len(key) == N  # rows are distinct, so partitions can be matched back to them
    seen: set[tuple[int, bytes]] = set()
    total = 0
    for pid in range(partitioner.num_partitions):
        part = partitioner.load_partition(pid)
        assert part.num_rows > 0 and part.column_names == ["img", "label"]
        p_images, p_labels = _arrays(part)
        assert p_images.shape[1:] == (28, 28)
        rows = {(int(y), x.tobytes()) for x, y in zip(p_images, p_labels)}
        assert rows <= key and not rows & seen  # rows of the dataset, each used once
        seen |= rows
        total += part.num_rows
    assert total == len(seen) <= N


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"channels": 2}, "channels=2"),
        ({"channels": True}, "channels=True"),
        ({"shuffle_seed": -1}, "shuffle_seed=-1"),
        ({"shuffle_seed": 1.5}, "shuffle_seed=1.5"),
    ],
)
def test_bad_arguments_name_the_field_and_value(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        embedded_dataset(**kwargs)
