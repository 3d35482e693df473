"""The Flower layer: strategies, client side, messages, identity, run config."""
