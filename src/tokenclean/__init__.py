"""tokenclean: token-level cleaning of supervised fine-tuning data."""

__version__ = "0.1.0"
