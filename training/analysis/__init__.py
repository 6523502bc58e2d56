"""Error analysis of a train run: confusion, per-class figures, calibration, mistakes, slices."""
