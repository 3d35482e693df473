"""quickstart_app: PerFedRLNAS on the embedded Fashion-MNIST with flwr-datasets partitions."""
