"""Choosing tokens: the keep-mask from scores."""
