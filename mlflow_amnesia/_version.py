"""The package version (one place: the facade, the record index header and requirements.txt read it)."""

__version__ = "0.1.0"
