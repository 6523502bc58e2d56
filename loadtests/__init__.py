"""Load tests: Locust scenarios, the runner that drives them, the SLO gate, reports and plots."""
