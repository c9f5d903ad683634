"""Everything that runs a model: loading, per-token losses, scoring, training, export."""
