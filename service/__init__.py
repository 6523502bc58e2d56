"""The BentoML prediction service (never imports torch): not built yet, see issue 4."""
