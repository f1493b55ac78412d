"""The e2e cluster: build (bash), start/stop (cluster.py), images its nodes get (images.py)."""
