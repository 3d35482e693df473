"""PerFedRLNAS legacy drop-in app: ServerApp(server_fn=...) and NumPyClient."""
