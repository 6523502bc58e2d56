"""The error hierarchy: each expected failure is a TuneserveError whose message says the fix."""

from __future__ import annotations


class TuneserveError(Exception):
    """Base of every error tuneserve raises on purpose; the CLI prints it as one line, exit 1."""


class ConfigError(TuneserveError, ValueError):
    """A config file or override is unreadable or invalid."""


class DataError(TuneserveError, ValueError):
    """A dataset is missing, malformed, or unusable after cleaning."""


class ModelError(TuneserveError, ValueError):
    """A model cannot be found, loaded, or is not of a supported kind."""


class ManifestError(TuneserveError, ValueError):
    """A run directory has no valid manifest, or its files do not match their recorded hashes."""


class RunError(TuneserveError, RuntimeError):
    """A stage could not write its run directory."""


class ParityError(TuneserveError, ValueError):
    """An exported model disagrees with its source beyond the configured tolerance."""
