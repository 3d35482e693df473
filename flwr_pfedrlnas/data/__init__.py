"""Data: the embedded default, IDX files, the Hugging Face hub, partitions and loaders."""

from flwr_pfedrlnas.data.cifar_schema import (
    CIFAR_SCHEMA_NUM_CLASSES,
    cifar_schema_dataset,
    cifar_schema_images,
    save_cifar_schema,
)
from flwr_pfedrlnas.data.embedded import EMBEDDED_CHANNELS, embedded_dataset, embedded_permutation

__all__ = [
    "CIFAR_SCHEMA_NUM_CLASSES",
    "EMBEDDED_CHANNELS",
    "cifar_schema_dataset",
    "cifar_schema_images",
    "embedded_dataset",
    "embedded_permutation",
    "save_cifar_schema",
]
