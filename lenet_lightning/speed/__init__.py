"""Speed-ups for training on the CPU: the layer swap behind ``fast_cpu_layers`` and freed host memory kept for
reuse; the measurements behind them are in docs/performance.md."""
