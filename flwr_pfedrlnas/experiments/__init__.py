"""Experiment tools outside the library's layers: the reproduction runner and the report."""
