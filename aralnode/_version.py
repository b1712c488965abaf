"""The package version, in one place (``aralnode.__version__`` re-exports it)."""

__version__ = "0.1.0"
