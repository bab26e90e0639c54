"""Speed-ups: the CPU layer swap behind ``fast_cpu_layers``, freed host memory kept for reuse, and the training
step captured as one CUDA graph behind ``cuda_graph``; the measurements behind them are in docs/performance.md."""
