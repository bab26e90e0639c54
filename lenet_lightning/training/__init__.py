"""A training run: the checks before it (preflight), build and fit, and the callbacks that keep it honest."""
