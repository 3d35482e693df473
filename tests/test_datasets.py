"""Tests of flwr_pfedrlnas.data: sources, Dirichlet partitions, splits, loaders."""

from __future__ import annotations

import importlib.resources
import inspect
from pathlib import Path

import datasets as hf_datasets
import numpy as np
import pytest
import torch

from flwr_pfedrlnas.data import cifar_schema, embedded, hub, sources
from flwr_pfedrlnas.data import datasets as D

IDX_DIR = Path("/work/shared/data/fashion-mnist")
K = 8


@pytest.fixture
def clear_caches():
    """Forget cached pools / partitions (for tests that fake the hub)."""
    sources._load_source_cached.cache_clear()
    D._partition_cached.cache_clear()
    yield
    sources._load_source_cached.cache_clear()
    D._partition_cached.cache_clear()


def _skew(hist: np.ndarray) -> float:
    """Mean total-variation distance of client label mixes from the pooled mix."""
    client = hist / hist.sum(axis=1, keepdims=True)
    pooled = hist.sum(axis=0) / hist.sum()
    return float(np.mean(0.5 * np.abs(client - pooled).sum(axis=1)))


# ------------------------------------------------------------------ embedded
def test_embedded_subset_shapes_and_balance():
    src = D.load_source("embedded")
    assert src.images.shape == (12_000, 1, 28, 28)
    assert src.images.dtype == np.uint8 and src.labels.dtype == np.int64
    assert np.array_equal(np.bincount(src.labels), np.full(10, 1200))
    info = src.info
    assert (info.num_classes, info.channels, info.image_size) == (10, 1, 28)
    assert info.resolution == 32 and len(info.class_names) == 10
    assert not src.images.flags.writeable  # the cached pool is protected


def test_embedded_npz_layout_and_license_in_package():
    data = importlib.resources.files("flwr_pfedrlnas").joinpath("data")
    with data.joinpath(D.EMBEDDED_NPZ).open("rb") as fh, np.load(fh) as npz:
        assert sorted(npz.files) == sorted(
            ["train_images", "train_labels", "test_images", "test_labels"]
        )
        assert npz["train_images"].shape == (10_000, 28, 28)
        assert npz["test_images"].shape == (2_000, 28, 28)
        assert npz["train_images"].dtype == np.uint8
        assert np.array_equal(np.bincount(npz["train_labels"]), np.full(10, 1000))
        assert np.array_equal(np.bincount(npz["test_labels"]), np.full(10, 200))
    text = data.joinpath("FASHION_MNIST_LICENSE.txt").read_text(encoding="utf-8")
    assert "Zalando" in text and "Permission is hereby granted" in text
    assert "1000 images per class" in text


def test_package_does_not_depend_on_shared_folder():
    for module in (D, sources, hub, embedded, cifar_schema):
        assert "/work/shared" not in inspect.getsource(module), module.__name__


# --------------------------------------------------------------- partitioning
def test_partitions_deterministic_disjoint_and_cover_pool():
    parts = D.partition_indices("embedded", K, 0.5, seed=3)
    D._partition_cached.cache_clear()
    again = D.partition_indices("embedded", K, 0.5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = D.partition_indices("embedded", K, 0.5, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))
    pooled = np.concatenate(parts)
    assert len(pooled) == len(np.unique(pooled)) == len(D.load_source("embedded"))
    assert np.array_equal(np.sort(pooled), np.arange(len(pooled)))
    assert min(len(p) for p in parts) >= D.MIN_PARTITION_SIZE


def test_small_alpha_skews_label_mix():
    labels = D.load_source("embedded").labels
    skew = {}
    for alpha in (0.1, 100.0):
        parts = D.partition_indices("embedded", K, alpha, seed=0)
        skew[alpha] = _skew(D.label_distribution([labels[p] for p in parts], 10))
    assert skew[0.1] > 0.5
    assert skew[100.0] < 0.1


def test_client_split_is_stratified_and_disjoint():
    src = D.load_source("embedded")
    parts = D.partition_indices("embedded", K, 0.3, seed=1)
    for pid in range(K):
        cd = D.load_client_data("embedded", pid, K, 0.3, seed=1, test_fraction=0.2)
        assert cd.num_train + cd.num_test == len(parts[pid])
        train_h = np.bincount(cd.train_y, minlength=10)
        test_h = np.bincount(cd.test_y, minlength=10)
        # same multiset of labels as the partition
        assert np.array_equal(train_h + test_h, np.bincount(src.labels[parts[pid]], minlength=10))
        # each class sends test_fraction of its examples to test, up to rounding
        assert np.all(np.abs(test_h - 0.2 * (train_h + test_h)) <= 1.0)


def test_client_data_deterministic_padded_and_normalised():
    a = D.load_client_data("embedded", 2, K, 0.5, seed=7)
    b = D.load_client_data("embedded", 2, K, 0.5, seed=7)
    assert np.array_equal(a.train_x, b.train_x) and np.array_equal(a.test_y, b.test_y)
    assert a.train_x.dtype == np.float32 and a.train_y.dtype == np.int64
    assert a.train_x.shape[1:] == (1, 32, 32)
    assert (a.num_classes, a.in_channels, a.resolution) == (10, 1, 32)
    background = (0.0 - 0.2860) / 0.3530
    border = np.concatenate([a.train_x[:, :, :2].ravel(), a.train_x[..., -2:].ravel()])
    assert np.allclose(border, background)


def test_label_distribution_counts():
    hist = D.label_distribution([np.array([0, 0, 2]), np.array([], dtype=int)], 3)
    assert hist.tolist() == [[2, 0, 1], [0, 0, 0]]
    with pytest.raises(ValueError, match="outside"):
        D.label_distribution([np.array([3])], 3)


# ------------------------------------------------------------------ IDX files
@pytest.mark.skipif(not IDX_DIR.is_dir(), reason="no Fashion-MNIST IDX folder")
def test_idx_loader_reads_full_fashion_mnist():
    src = D.load_source("fashion-mnist-idx", str(IDX_DIR))
    assert src.images.shape == (70_000, 1, 28, 28)
    assert np.array_equal(np.bincount(src.labels), np.full(10, 7000))
    assert src.info.name == "fashion-mnist-idx"


# ----------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"source": "mnist"}, ValueError, "source='mnist'"),
        ({"partition_id": 8}, ValueError, "partition_id=8"),
        ({"partition_id": -1}, ValueError, "partition_id=-1"),
        ({"alpha": 0.0}, ValueError, "alpha=0.0"),
        ({"alpha": -1.0}, ValueError, "alpha=-1.0"),
        ({"test_fraction": 1.0}, ValueError, "test_fraction=1.0"),
        ({"num_partitions": 0, "partition_id": 0}, ValueError, "num_partitions=0"),
        ({"num_partitions": 5000}, ValueError, "num_partitions=5000"),
        ({"seed": -2}, ValueError, "seed=-2"),
    ],
)
def test_bad_client_arguments_name_field_and_value(kwargs, error, pattern):
    args = {
        "source": "embedded",
        "partition_id": 0,
        "num_partitions": K,
        "alpha": 0.5,
        "seed": 0,
    }
    args.update(kwargs)
    with pytest.raises(error, match=pattern):
        D.load_client_data(**args)


def test_missing_idx_directory_and_files(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="data_dir=.*nope"):
        D.load_source("fashion-mnist-idx", str(missing))
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        D.load_source("fashion-mnist-idx", str(tmp_path))


def test_idx_reader_rejects_non_idx_file(tmp_path):
    for stem in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (tmp_path / stem).write_bytes(b"not an idx file")
    with pytest.raises(ValueError, match="not an IDX file"):
        D.load_source("fashion-mnist-idx", str(tmp_path))


# ---------------------------------------------------------------------- hub
def test_hub_unreachable_gives_clear_error(monkeypatch, clear_caches):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'uoft-cs/cifar10' on the Hub")

    monkeypatch.setattr(hf_datasets, "load_dataset", offline)
    with pytest.raises(ConnectionError, match="unreachable.*source='embedded'"):
        D.load_source("cifar10")
    with pytest.raises(ConnectionError, match="fashion-mnist-idx"):
        D.load_client_data("cifar100", 0, 4, 0.5, seed=0)


def test_hub_path_through_federated_dataset(monkeypatch, clear_caches):
    """The hub code path end to end, with datasets.load_dataset faked locally."""
    src = D.load_source("embedded")
    rng = np.random.default_rng(0)
    keep = np.sort(rng.choice(len(src), size=600, replace=False))
    images, labels = src.images[keep, 0], src.labels[keep]
    features = hf_datasets.Features(
        {
            "image": hf_datasets.Image(),
            "label": hf_datasets.ClassLabel(names=list(src.info.class_names)),
        }
    )
    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append(path)
        train = hf_datasets.Dataset.from_dict(
            {"image": list(images), "label": labels}, features=features
        )
        return hf_datasets.DatasetDict({"train": train, "test": train.select([0])})

    monkeypatch.setattr(hf_datasets, "load_dataset", fake_load_dataset)
    hub = D.load_source("fashion-mnist")
    assert calls and set(calls) == {"zalando-datasets/fashion_mnist"}
    assert np.array_equal(hub.images[:, 0], images)  # row order kept
    assert np.array_equal(hub.labels, labels)
    parts = D.partition_indices("fashion-mnist", 4, 0.5, seed=0)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(600))
    cd = D.load_client_data("fashion-mnist", 1, 4, 0.5, seed=0)
    assert cd.train_x.shape[1:] == (1, 32, 32)
    assert cd.num_train + cd.num_test == len(parts[1])


# -------------------------------------------------------------------- loaders
def test_loaders_yield_batches_of_right_shape():
    cd = D.load_client_data("embedded", 0, K, 0.5, seed=0)
    train, test = D.make_loaders(cd, batch_size=16, seed=0)
    x, y = next(iter(train))
    assert x.shape == (16, 1, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64
    assert sum(len(yb) for _, yb in test) == cd.num_test
    again, _ = D.make_loaders(cd, batch_size=16, seed=0)
    assert torch.equal(next(iter(again))[1], y)  # seeded shuffle
    with pytest.raises(ValueError, match="batch_size=0"):
        D.make_loaders(cd, batch_size=0, seed=0)
