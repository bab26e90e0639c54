"""Pruning: after each epoch a trial reports its validation metric to its study, whose pruner may stop it.

The callback runs in the job's process, which may be another process or machine than the sweeper's: it finds its
trial in the shared storage from what the sweeper put in the job's ``hydra.sweeper`` config (storage, study name,
trial number). A pruned run stops like an early-stopped one (``trainer.should_stop``): its last epoch is
checkpointed, its result recorded as ``pruned``, and the process exits 0. Optuna is imported only by a trial's
job: training without the ``optuna`` extra never needs it.
"""

from typing import TYPE_CHECKING

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

if TYPE_CHECKING:
    import optuna

PRUNED_KEY = "pruned_at_epoch"  # in callback_metrics, where fit() reads it


class ReportToTrial(L.Callback):
    """Report ``hydra.sweeper.objective`` after every validation epoch; stop training when the trial is pruned.

    Outside a search (a single run, a grid sweep, a test calling ``fit``) there is no trial and it does nothing.
    """

    def __init__(self) -> None:
        sweeper = HydraConfig.get().sweeper if HydraConfig.initialized() else None
        self.trial = trial_of_job(sweeper) if sweeper is not None and sweeper.get("trial") is not None else None
        self.monitor = str(sweeper.objective) if self.trial is not None else ""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.trial is None or trainer.sanity_checking:
            return
        prune = False
        if trainer.is_global_zero and self.monitor in trainer.callback_metrics:
            epoch = trainer.current_epoch + 1
            self.trial.report(float(trainer.callback_metrics[self.monitor]), epoch)
            prune = epoch < trainer.max_epochs and self.trial.should_prune()  # one that trained every epoch completed
        if trainer.strategy.broadcast(prune):  # every process stops at the same epoch
            trainer.should_stop = True
            trainer.callback_metrics[PRUNED_KEY] = torch.tensor(trainer.current_epoch + 1)


def trial_of_job(sweeper: DictConfig) -> "optuna.trial.Trial":
    """The running trial the sweeper created for this job, found in the study's storage by its number."""
    import optuna

    from lenet_lightning.search.storage import open_storage, storage_of

    storage = open_storage(storage_of(sweeper.storage, HydraConfig.get().sweep.dir))
    study = optuna.load_study(study_name=sweeper.study_name, storage=storage, pruner=instantiate(sweeper.pruner))
    study_id = storage.get_study_id_from_name(sweeper.study_name)
    return optuna.trial.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, int(sweeper.trial)))


def pruned_at(trainer: L.Trainer) -> int | None:
    """The epoch after which the study pruned this run, if it did."""
    epoch = trainer.callback_metrics.get(PRUNED_KEY)
    return None if epoch is None else int(epoch)
