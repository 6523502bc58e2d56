"""Locust scenarios and the runner that drives them (the SLO gate and reports: issue 6)."""
