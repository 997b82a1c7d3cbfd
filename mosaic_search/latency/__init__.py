"""Predicted and measured speed: timing, the timed model harness, `profile` and `bench`."""
