"""PerFedRLNAS Flower app."""
