"""What runs and sweeps leave behind for people: run records, sweep summaries, plots, error analysis."""
