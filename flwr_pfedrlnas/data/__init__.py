"""Data: the embedded default, IDX files, the Hugging Face hub, partitions and loaders."""
