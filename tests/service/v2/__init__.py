"""Tests of the Open Inference Protocol v2 routes (service/v2/)."""
