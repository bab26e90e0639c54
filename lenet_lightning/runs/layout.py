"""The files of a run folder and the statuses its ``result.json`` can hold: the names every module shares.

<run>/.hydra/{config,hydra,overrides}.yaml   what Hydra composed, and the command-line overrides
<run>/checkpoints/last.ckpt                  the last finished epoch (replaced atomically each epoch)
<run>/result.json                            how the run ended: status, reason, final metrics
<run>/events.out.tfevents.*                  TensorBoard curves, one file per session
<run>/train.log                              the console lines with timestamps
<run>/.lock                                  "<pid> <host>" of the process writing the folder
"""

from enum import StrEnum
from pathlib import Path

HYDRA_DIR = ".hydra"
RUN_CONFIG = Path(HYDRA_DIR) / "config.yaml"
SAVED_OVERRIDES = Path(HYDRA_DIR) / "overrides.yaml"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = Path(CHECKPOINT_DIR) / "last.ckpt"
RESULT_FILE = "result.json"
LOCK_FILE = ".lock"
EVENT_FILES = "events.out.tfevents.*"
# A sweep folder's own files, beside one folder per job.
SWEEP_FILES = ("multirun.yaml", "summary.csv", "summary.md")


class RunStatus(StrEnum):
    """How a run ended, as ``result.json`` and the sweep summary say it."""

    COMPLETED = "completed"  # trained every epoch asked for
    DIVERGED = "diverged"  # the training loss became NaN or infinite
    PRUNED = "pruned"  # stopped early by its search's pruner: a result of the search, not a failure
    NO_EPOCHS = "no_epochs"  # ended without training an epoch (nothing left to train, no batches)
    INTERRUPTED = "interrupted"  # stopped by a signal, or killed (a checkpoint but no result.json)
    FAILED = "failed"  # an error ended it
    UNREADABLE = "unreadable"  # its record is damaged (summaries only)

    @property
    def has_metrics(self) -> bool:
        """Trained to an end, so its final metrics mean something."""
        return self in (RunStatus.COMPLETED, RunStatus.DIVERGED, RunStatus.PRUNED)


def is_run_folder(folder: Path) -> bool:
    """A folder a training run wrote: Hydra's record of it or a checkpoint folder."""
    return (folder / HYDRA_DIR).is_dir() or (folder / CHECKPOINT_DIR).is_dir()
