"""The BentoML service: variants, A/B routing, feedback store, statistics, metrics; no torch."""
