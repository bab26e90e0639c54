"""Opt-in fast paths for training on the CPU; the measurements behind them are in docs/performance.md."""
