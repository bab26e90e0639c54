"""The run record, one owner: what a run folder holds and the only code that writes or judges it.

``layout`` names its files and statuses; ``commands`` prints pasteable command lines; ``folder`` and ``lock``
claim a folder for one run; ``result`` reads and writes ``result.json``; ``checkpoint_files`` saves and loads
checkpoints; ``resume`` decides what a run continues from; ``prepare`` is the Hydra callback that runs every
check before anything is written.
"""
