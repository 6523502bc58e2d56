"""Locust scenarios, the SLO gate and load-test reports: not built yet, see issue 6."""
