"""Run directories: stages, methods, comparisons, the score cache."""
