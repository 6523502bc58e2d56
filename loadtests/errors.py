"""Errors of the load-test stage (bad input itself is a ConfigError from the core)."""

from __future__ import annotations

from tuneserve.errors import TuneserveError


class LoadTestError(TuneserveError, RuntimeError):
    """The load test could not run: the host is unreachable, or Locust failed."""
