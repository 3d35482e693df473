"""quickstart_legacy: the supernet family and the data."""

from __future__ import annotations

import json

import numpy as np
import torch
from flwr_datasets.partitioner import DirichletPartitioner
from torch.utils.data import DataLoader

from flwr_pfedrlnas import get_supernet
from flwr_pfedrlnas.data import embedded_dataset

# The last rows of the (shuffled) embedded data go to no client (as in the
# Message-API quickstart, where they are the server's test set).
NUM_SERVER_TEST = 1000


def load_family(name: str, config_json: str):
    """The supernet family: 1-channel 28x28 images padded to 32x32, 10 classes."""
    return get_supernet(name, in_channels=1, num_classes=10, **json.loads(config_json))


def apply_transforms(batch):
    """PIL images -> normalised 1x32x32 tensors (2 pixels of zero padding)."""
    images = []
    for img in batch["img"]:
        x = (np.asarray(img, dtype=np.float32) / 255.0 - 0.2860) / 0.3530
        images.append(torch.from_numpy(np.pad(x, 2))[None])
    batch["img"] = images
    return batch


partitioner = None  # Cache the partitioner


def load_data(partition_id: int, num_partitions: int, batch_size: int, alpha: float = 0.5):
    """Train and test loaders of one partition; batches are dicts {"img", "label"}."""
    global partitioner
    if partitioner is None:
        data = embedded_dataset()
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions, partition_by="label", alpha=alpha, seed=42
        )
        partitioner.dataset = data.select(range(len(data) - NUM_SERVER_TEST))
    partition = partitioner.load_partition(partition_id)
    split = partition.train_test_split(test_size=0.2, seed=42).with_transform(apply_transforms)
    train_loader = DataLoader(split["train"], batch_size=batch_size, shuffle=True)
    test_loader = DataLoader(split["test"], batch_size=batch_size)
    return train_loader, test_loader
