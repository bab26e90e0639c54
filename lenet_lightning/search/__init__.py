"""Hyper-parameter searches on Optuna: search space, shared study storage, pruning, the study and its summary."""
