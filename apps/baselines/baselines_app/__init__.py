"""Personalised-FL baselines Flower app."""
