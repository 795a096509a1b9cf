"""The version of linmeta (one place; the package and its records read it)."""
__version__ = "0.1.0"
