"""The framework-free round protocol: settings, numbering, sampling, costs, checkpoints, results."""
