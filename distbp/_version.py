"""The package version, importable without numpy (the communicators send it in their hello)."""

__version__ = "0.1.0"
