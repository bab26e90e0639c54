"""Test accuracy of each class after every epoch: which classes the network learns first and which lag behind."""

from typing import Any

import lightning as L
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

PER_CLASS_TAG = "test/acc_class"  # one scalar per class: test/acc_class/<class name>


class PerClassAccuracy(L.Callback):
    """Logs ``test/acc_class/<class name>`` with each epoch's ``test/acc``, against the epoch number.

    Counts the logits the test step already computed (``LeNetClassifier.validation_step`` returns them), so it
    costs no second pass. With several processes each counts its share of the test set, and the metric adds
    up the counts of all of them before dividing. A class's accuracy is the share of its test images
    classified as it (its recall); weighted by the class's image count, they add up to ``test/acc``.
    """

    def __init__(self) -> None:
        self.class_names: list[str] = []
        self.metric: MulticlassAccuracy | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.class_names = list(trainer.datamodule.classes)
        # The strategy's device: the module is moved there only after setup.
        metric = MulticlassAccuracy(len(self.class_names), average="none", validate_args=False)
        self.metric = metric.to(trainer.strategy.root_device)

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Tensor | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if dataloader_idx == 0 and outputs is not None:  # loader 0 is the test set; 1 the validation split
            self.metric.update(outputs, batch[1])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        accuracy = self.metric.compute()  # every process calls it: the counts are summed across them here
        self.metric.reset()
        if trainer.sanity_checking:
            return
        for name, value in zip(self.class_names, accuracy, strict=True):
            # Equal in every process already: syncing (the max of equal numbers) only spares Lightning's warning.
            pl_module.log(f"{PER_CLASS_TAG}/{name}", value, add_dataloader_idx=False, sync_dist=True, reduce_fx="max")
