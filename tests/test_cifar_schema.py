"""The CIFAR path offline: a CIFAR-schema stand-in loaded through the hub code, and ``flwr run``."""

from __future__ import annotations

import importlib.resources

import datasets as hf_datasets
import numpy as np
import pandas as pd
import pytest
from flwr_datasets import FederatedDataset
from flwr_datasets.partitioner import DirichletPartitioner

from flwr_pfedrlnas.data import (
    cifar_schema_dataset,
    cifar_schema_images,
    save_cifar_schema,
    sources,
)
from flwr_pfedrlnas.data import datasets as D

# The label names of uoft-cs/cifar10 on the hub, written out here (not taken from the package).
CIFAR10_NAMES = "airplane automobile bird cat deer dog frog horse ship truck".split()


@pytest.fixture(autouse=True)
def hf_cache(tmp_path_factory, monkeypatch):
    """Keep the datasets cache of local folders out of the user's home."""
    monkeypatch.setattr(hf_datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def cifar10_dir(tmp_path_factory):
    return save_cifar_schema(
        tmp_path_factory.mktemp("cifar10-schema"), 10, train_per_class=60, test_per_class=10
    )


@pytest.fixture(scope="module")
def cifar100_dir(tmp_path_factory):
    return save_cifar_schema(
        tmp_path_factory.mktemp("cifar100-schema"), 100, train_per_class=8, test_per_class=2
    )


def _npz(split: str) -> tuple[np.ndarray, np.ndarray]:
    ref = importlib.resources.files("flwr_pfedrlnas").joinpath("data", "fashion_mnist_subset.npz")
    with ref.open("rb") as fh, np.load(fh) as npz:
        return npz[f"{split}_images"], npz[f"{split}_labels"].astype(np.int64)


def _decoded(split: hf_datasets.Dataset, label: str) -> tuple[np.ndarray, np.ndarray]:
    table = split.with_format("numpy")[:]
    return np.asarray(table["img"]), np.asarray(table[label])


# -------------------------------------------------------------------- the builder
def test_cifar10_schema_matches_the_hub_dataset():
    dd = cifar_schema_dataset(10, train_per_class=5, test_per_class=2)
    assert sorted(dd) == ["test", "train"]
    assert (dd["train"].num_rows, dd["test"].num_rows) == (50, 20)
    train = dd["train"]
    assert train.column_names == ["img", "label"]
    assert isinstance(train.features["img"], hf_datasets.Image)
    assert train.features["label"].names == CIFAR10_NAMES
    img = train[0]["img"]
    assert img.mode == "RGB" and img.size == (32, 32)


def test_cifar100_schema_matches_the_hub_dataset():
    train = cifar_schema_dataset(100, train_per_class=2, test_per_class=1)["train"]
    assert train.column_names == ["img", "fine_label", "coarse_label"]
    assert train.features["fine_label"].num_classes == 100
    assert train.features["coarse_label"].num_classes == 20
    fine, coarse = np.asarray(train["fine_label"]), np.asarray(train["coarse_label"])
    assert np.array_equal(np.bincount(fine, minlength=100), np.full(100, 2))
    assert np.array_equal(coarse, fine // 5)


def test_images_are_the_embedded_ones_padded_with_three_distinct_channels():
    gray = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 28, 28) % 256
    rgb = cifar_schema_images(gray.astype(np.uint8), size=32)
    assert rgb.shape == (2, 32, 32, 3) and rgb.dtype == np.uint8
    inner = rgb[:, 2:30, 2:30]
    assert np.array_equal(inner[..., 0], gray)
    assert np.array_equal(inner[..., 1], 255 - gray)
    assert np.array_equal(inner[..., 2], gray // 2)
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert np.array_equal(rgb[:, border], np.tile([0, 255, 0], (2, border.sum(), 1)))


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_pixel_and_label_round_trips_from_the_npz(split):
    npz_images, npz_labels = _npz(split)
    images, labels = _decoded(cifar_schema_dataset(10, seed=3)[split], "label")
    assert images.shape == (len(npz_labels), 32, 32, 3)
    padded = np.pad(npz_images, ((0, 0), (2, 2), (2, 2)))
    expected = np.stack([padded, 255 - padded, padded // 2], axis=-1)

    def rows(x, y):
        return sorted((int(b), a.tobytes()) for a, b in zip(x, y))

    assert rows(images, labels) == rows(expected, npz_labels)
    assert not np.array_equal(labels, np.sort(labels))  # shuffled, as on the hub


def test_cifar100_fine_labels_split_each_embedded_class_in_ten():
    _, npz_labels = _npz("train")
    images, fine = _decoded(cifar_schema_dataset(100)["train"], "fine_label")
    assert np.array_equal(np.bincount(fine, minlength=100), np.full(100, 100))
    assert np.array_equal(np.bincount(fine // 10), np.bincount(npz_labels))
    # the k-th example of class c is fine label 10 c + k % 10
    _, c10 = _decoded(cifar_schema_dataset(10)["train"], "label")
    assert np.array_equal(np.bincount(c10), np.bincount(fine // 10))


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"num_classes": 20}, ValueError, "num_classes=20"),
        ({"size": 29}, ValueError, "size=29"),
        ({"size": 24}, ValueError, "size=24"),
        ({"train_per_class": 0}, ValueError, "train_per_class=0"),
        ({"train_per_class": 1001}, ValueError, "train_per_class=1001"),
        ({"num_classes": 100, "test_per_class": 21}, ValueError, "test_per_class=21"),
        ({"seed": -1}, ValueError, "seed=-1"),
    ],
)
def test_bad_arguments_name_the_field_and_write_nothing(tmp_path, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        save_cifar_schema(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_save_refuses_to_mix_with_an_existing_folder(cifar10_dir):
    before = sorted(p.name for p in (cifar10_dir / "data").iterdir())
    with pytest.raises(FileExistsError, match="already holds a 'data' folder"):
        save_cifar_schema(cifar10_dir)
    assert sorted(p.name for p in (cifar10_dir / "data").iterdir()) == before


# ------------------------------------------- the folder through flwr-datasets' own code
def test_folder_loads_with_its_features_through_federated_dataset(cifar10_dir):
    assert sorted(p.name for p in (cifar10_dir / "data").iterdir()) == [
        "test-00000-of-00001.parquet",
        "train-00000-of-00001.parquet",
    ]
    partitioner = DirichletPartitioner(
        num_partitions=4, partition_by="label", alpha=0.3, min_partition_size=10, seed=0
    )
    fds = FederatedDataset(dataset=str(cifar10_dir), partitioners={"train": partitioner})
    assert fds.load_split("test").num_rows == 100
    sizes = []
    for pid in range(4):
        part = fds.load_partition(pid, "train")
        assert part.features["label"].names == CIFAR10_NAMES
        images, _ = _decoded(part, "label")
        assert images.shape[1:] == (32, 32, 3) and images.dtype == np.uint8
        sizes.append(part.num_rows)
    assert sum(sizes) == 600 and min(sizes) >= 10


def test_package_reads_the_folder_through_the_hub_code(cifar10_dir, monkeypatch):
    sources._load_source_cached.cache_clear()
    D._partition_cached.cache_clear()
    calls = []
    real = hf_datasets.load_dataset

    def recording(path, *args, **kwargs):
        calls.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(hf_datasets, "load_dataset", recording)
    pool = D.load_source("cifar10", data_dir=str(cifar10_dir))
    assert calls == [str(cifar10_dir)]  # FederatedDataset -> load_dataset(local folder)
    assert pool.images.shape == (600, 3, 32, 32) and pool.images.dtype == np.uint8
    assert (pool.info.channels, pool.info.num_classes, pool.info.resolution) == (3, 10, 32)
    assert pool.info.hub_path == str(cifar10_dir)
    # Row order is the split's own (shuffle=False) and channels are not mixed up.
    images, labels = _decoded(hf_datasets.load_dataset(str(cifar10_dir))["train"], "label")
    assert np.array_equal(pool.images, images.transpose(0, 3, 1, 2))
    assert np.array_equal(pool.labels, labels)
    assert np.array_equal(pool.images[:, 1], 255 - pool.images[:, 0])

    parts = D.partition_indices("cifar10", 4, 0.3, seed=0, data_dir=str(cifar10_dir))
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(600))
    cd = D.load_client_data("cifar10", 2, 4, 0.3, seed=0, data_dir=str(cifar10_dir))
    assert cd.train_x.shape[1:] == (3, 32, 32) and cd.in_channels == 3
    assert cd.num_train + cd.num_test == len(parts[2])
    # Normalised with the CIFAR-10 statistics: a zero-padding pixel of channel 0.
    assert np.isclose(cd.train_x[0, 0, 0, 0], (0.0 - 0.4914) / 0.2470, atol=1e-6)
    train, _ = D.make_loaders(cd, batch_size=8, seed=0)
    x, y = next(iter(train))
    assert tuple(x.shape) == (8, 3, 32, 32) and int(y.max()) < 10


def test_cifar100_folder_gives_a_hundred_fine_classes(cifar100_dir):
    pool = D.load_source("cifar100", data_dir=str(cifar100_dir))
    assert pool.info.num_classes == 100 and len(pool.info.class_names) == 100
    assert np.array_equal(np.bincount(pool.labels, minlength=100), np.full(100, 8))
    cd = D.load_client_data("cifar100", 0, 2, 0.1, seed=0, data_dir=str(cifar100_dir))
    assert cd.num_classes == 100 and cd.train_x.shape[1:] == (3, 32, 32)


def test_fashion_mnist_hub_schema_reads_a_local_folder_the_same_way(tmp_path):
    from flwr_pfedrlnas.data import embedded_dataset, embedded_permutation

    folder = tmp_path / "fashion"
    (folder / "data").mkdir(parents=True)
    rows = embedded_dataset(shuffle_seed=5).select(range(300)).rename_column("img", "image")
    rows.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    pool = D.load_source("fashion-mnist", data_dir=str(folder))
    embedded = D.load_source("embedded")
    perm = embedded_permutation(5)[:300]
    assert np.array_equal(pool.images, embedded.images[perm])
    assert np.array_equal(pool.labels, embedded.labels[perm])
    assert (pool.info.channels, pool.info.image_size, pool.info.resolution) == (1, 28, 32)


def test_bad_folders_name_the_folder_or_the_column(tmp_path, cifar10_dir):
    with pytest.raises(FileNotFoundError, match="data_dir=.*missing"):
        D.load_source("cifar10", data_dir=str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="data_dir=.*empty.*'train' split"):
        D.load_source("cifar10", data_dir=str(empty))
    notes = tmp_path / "notes"
    (notes / "data").mkdir(parents=True)
    (notes / "data" / "train.txt").write_text("a text file, not images\n")
    with pytest.raises(ValueError, match=r"data_dir=.*notes.* no column\(s\) \['img', 'label'\]"):
        D.load_source("cifar10", data_dir=str(notes))
    with pytest.raises(ValueError, match=r"no column\(s\) \['fine_label'\]"):
        D.load_source("cifar100", data_dir=str(cifar10_dir))


# ------------------------------------------------------------- flwr run, two rounds
@pytest.mark.slow
def test_flwr_run_on_the_cifar10_schema_folder(tmp_path):
    from flwr_processes import APP, SUPERNET_CONFIG, flwr_run_to_end

    data_dir = save_cifar_schema(tmp_path / "cifar10", 10, train_per_class=40, test_per_class=5)
    results = tmp_path / "results"
    returncode, runs, log = flwr_run_to_end(
        tmp_path,
        APP,
        [
            "num-server-rounds=2 num-clients=3 clients-per-round=2 "
            f"dataset='cifar10' data-dir='{data_dir}' dirichlet-alpha=0.3 "
            f"results-dir='{results}'",
            f"supernet-config='{SUPERNET_CONFIG}'",
        ],
        num_supernodes=3,
        extra_env={"HF_DATASETS_CACHE": str(tmp_path / "hf-cache")},
    )
    assert returncode == 0, log[-6000:]
    assert [r["status"] for r in runs] == ["finished:completed"], (log[-6000:], runs)
    rounds = pd.read_csv(results / "rounds.csv")
    assert list(rounds["round"]) == [1, 2]
    assert (rounds["num-accepted"] == 2).all()
    assert (rounds["num-evaluated"] == 3).all()
    # The server sized the supernet for 3-channel input and 10 classes.
    config = (results / "config.json").read_text()
    assert '"in_channels": 3' in config and '"num_classes": 10' in config
