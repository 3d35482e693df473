"""quickstart_legacy: PerFedRLNAS behind Flower's legacy API (NumPyClient, ServerConfig)."""
