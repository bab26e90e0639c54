"""The run record, one owner: what a run folder holds and the only code that writes or judges it.

``layout`` names its files and statuses; ``folder`` claims a run folder for one process (atomic name, lock,
writable); ``sweep_folder`` does the same for a sweep's folder; ``record`` reads and writes ``result.json`` and
the saved overrides; ``atomic`` replaces files in one step; ``checkpoint_files`` saves and safely loads
checkpoints; ``resume`` turns ``resume=`` into the run's own overrides; ``checkpoint_fit`` checks a checkpoint
against a config; ``commands`` prints command lines to paste. Every check runs before any of it writes: see
``training/preflight.py``.
"""
