"""A training run: build and fit, its callbacks, its checkpoints and its run folder."""
