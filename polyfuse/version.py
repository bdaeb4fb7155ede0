"""The package's version, read by the artifact manifest, the model card, exported graphs and the server."""
__version__ = "0.1.0"
