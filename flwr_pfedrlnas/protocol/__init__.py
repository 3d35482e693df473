"""The framework-free round protocol: numbering, sampling, costs, checkpoints, results."""
