"""The package version (one place; read by the CLI, result provenance and the model cache)."""
__version__ = "0.1.0"
