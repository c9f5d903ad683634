"""The synthetic-world demo: a world with known noise, a pretrained toy model, the run."""
