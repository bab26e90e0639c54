"""The LightningModule: cross-entropy on LeNet's logits, SGD (optionally scheduled), and the per-epoch metrics."""

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lenet_lightning.data.augment import shift_and_flip
from lenet_lightning.model.lenet import LeNet

# Learning-rate schedules by config name, with the argument that takes the run's length in optimizer steps:
# each is stepped once per batch, over the whole run. The names users may give are checked by the config schema.
SCHEDULERS = {
    "cosine": (torch.optim.lr_scheduler.CosineAnnealingLR, "T_max"),
    "onecycle": (torch.optim.lr_scheduler.OneCycleLR, "total_steps"),
}


class LeNetClassifier(L.LightningModule):
    """Trains a :class:`LeNet` and logs ``train/loss``, ``train/acc`` and ``test/acc`` once per epoch.

    Every argument is a plain dict or number, so checkpoints carry their own architecture and load with
    ``weights_only=True``. ``scheduler`` (``name`` plus keyword arguments of the torch scheduler) and
    ``augment`` (keyword arguments of :func:`shift_and_flip`, applied to training batches only) are off
    when absent. Metrics are logged against the epoch number (1..N) instead of the optimizer
    step, so the curves line up with the recipe's plot. Speed options (fast CPU layers, memory format,
    compile, the captured CUDA step) are applied to a built module from outside, by ``lenet_lightning.speed``.
    """

    def __init__(
        self,
        net: dict[str, Any],
        optimizer: dict[str, Any],
        num_classes: int = 10,
        class_names: list[str] | None = None,
        scheduler: dict[str, Any] | None = None,
        augment: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = LeNet(**net, num_classes=num_classes)
        # Argument validation and NaN checks in the metrics cost a host sync per step; the inputs here
        # are our own logits and labels, so both are off.
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_loss = MeanMetric(nan_strategy="disable")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def features_and_logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The penultimate features (what the last layer reads: 84 numbers per image) and the logits, in one pass.

        Runs LeNet's layers one by one, uncompiled, so the features are there with any ``compile`` setting.
        """
        features = self.net.classifier[:-1](self.net.features(images))
        return features, self.net.classifier[-1](features)

    def augmented(self, images: Tensor) -> Tensor:
        """Training images as the recipe's augmentation shifts and flips them (unchanged when it is off).

        Applied in the training step rather than a batch hook: only training batches pass, already on their device.
        """
        return shift_and_flip(images, **self.hparams.augment) if self.hparams.augment else images

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        images = self.augmented(images)
        logits = self.net(images)
        losses = F.cross_entropy(logits, labels, reduction="none")
        # Per-example losses: the epoch's loss is the mean over examples, as the recipe defines it, and no
        # Python number is copied to the device (on a GPU that copy would wait for the step to finish).
        self.train_loss.update(losses.detach())
        self.train_acc.update(logits.detach(), labels)
        return losses.mean()

    def on_train_epoch_end(self) -> None:
        self.log("train/loss", self.train_loss)
        self.log("train/acc", self.train_acc)
        self.log_epoch_as_step()

    def log_epoch_as_step(self, **options: Any) -> None:
        """The curves' x-axis is the 1-based epoch, as in the recipe's plot; every process logs the same number."""
        self.log("step", float(self.current_epoch + 1), sync_dist=True, **options)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> Tensor | None:
        """Loader 0 is the official test set (its logits are returned, as :meth:`test_step` does); loader 1, when
        present, the validation split."""
        if dataloader_idx == 0:
            return self.test_step(batch, batch_idx)
        images, labels = batch
        logits = self.net(images)
        self.val_loss.update(F.cross_entropy(logits, labels, reduction="none"))
        self.val_acc.update(logits, labels)
        return None

    def on_validation_epoch_end(self) -> None:
        if self.val_acc.update_count:
            self.log("val/loss", self.val_loss, add_dataloader_idx=False)
            self.log("val/acc", self.val_acc, add_dataloader_idx=False)
        self.log("test/loss", self.test_loss, add_dataloader_idx=False)
        self.log("test/acc", self.test_acc, add_dataloader_idx=False)
        self.log_epoch_as_step(add_dataloader_idx=False)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Returns the logits: callbacks read them in their batch-end hooks instead of running the net again."""
        images, labels = batch
        logits = self.net(images)
        self.test_loss.update(F.cross_entropy(logits, labels, reduction="none"))
        self.test_acc.update(logits, labels)
        return logits

    def on_test_epoch_end(self) -> None:
        self.log("test/loss", self.test_loss)
        self.log("test/acc", self.test_acc)

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        optimizer = torch.optim.SGD(self.parameters(), **self.hparams.optimizer)
        schedule = dict(self.hparams.scheduler or {})
        name = schedule.pop("name", "none")
        if name == "none":
            return optimizer
        scheduler_class, length_argument = SCHEDULERS[name]
        steps = int(self.trainer.estimated_stepping_batches)  # a one-step one-cycle warm-up is refused before the run
        schedule[length_argument] = steps
        scheduler = scheduler_class(optimizer, **schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
