"""Pictures of a run: matplotlib (the `plot` extra) with the Agg backend, no display needed."""
