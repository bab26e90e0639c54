"""The LightningModule: cross-entropy on LeNet's logits, SGD (optionally scheduled), and the per-epoch metrics."""

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lenet_lightning.config.errors import UserError
from lenet_lightning.data.augment import shift_and_flip
from lenet_lightning.model.lenet import LeNet
from lenet_lightning.speed.cuda_graph import CapturedTrainingStep

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
    step, so the curves line up with the recipe's plot.

    ``cuda_graph=True`` trains with manual optimization through a :class:`CapturedTrainingStep` (the whole step
    replayed as one CUDA graph on a GPU), whose device-side sums give ``train/loss`` and ``train/acc``.
    """

    def __init__(
        self,
        net: dict[str, Any],
        optimizer: dict[str, Any],
        num_classes: int = 10,
        class_names: list[str] | None = None,
        scheduler: dict[str, Any] | None = None,
        augment: dict[str, Any] | None = None,
        compile_mode: str | None = None,
        memory_format: str = "contiguous",
        cuda_graph: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["compile_mode", "memory_format", "cuda_graph"])  # how it ran, not what it is
        self.automatic_optimization = not cuda_graph
        self.captured_step: CapturedTrainingStep | None = None  # made in on_train_start when cuda_graph is set
        self.net = LeNet(**net, num_classes=num_classes)
        if memory_format == "channels_last":
            # In place, before any optimizer or strategy sees the parameters; moving to a device keeps the layout.
            self.net.to(memory_format=torch.channels_last)
        if compile_mode:
            # In place: the network's forward and backward are compiled (CUDA graphs with "reduce-overhead"),
            # while metric updates stay eager and the state_dict keeps its plain parameter names.
            self.net.compile(mode=compile_mode)
        # Argument validation and NaN checks in the metrics cost a host sync per step; the inputs here
        # are our own logits and labels, so both are off.
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_loss = MeanMetric(nan_strategy="disable")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def features_and_logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The penultimate features (what the last layer reads: 84 numbers per image) and the logits, in one pass.

        Runs LeNet's layers one by one, uncompiled, so the features are there with any ``compile`` setting.
        """
        features = self.net.classifier[:-1](self.net.features(images))
        return features, self.net.classifier[-1](features)

    def on_train_start(self) -> None:
        if not self.automatic_optimization:
            # Here, after a resumed run's optimizer state is restored: restoring replaces the param groups.
            self.captured_step = CapturedTrainingStep(self.net, self.optimizers().optimizer)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        if self.hparams.augment:
            # Here rather than in a batch hook: only training batches pass through, already on their device.
            images = shift_and_flip(images, **self.hparams.augment)
        if self.captured_step is not None:
            return self._captured_training_step(images, labels)
        logits = self.net(images)
        losses = F.cross_entropy(logits, labels, reduction="none")
        # Per-example losses: the epoch's loss is the mean over examples, as the recipe defines it, and no
        # Python number is copied to the device (on a GPU that copy would wait for the step to finish).
        self.train_loss.update(losses.detach())
        self.train_acc.update(logits.detach(), labels)
        return losses.mean()

    def _captured_training_step(self, images: Tensor, labels: Tensor) -> Tensor:
        optimizer = self.optimizers()
        # Lightning counts optimizer steps (the global step, which checkpoints and loggers read) around
        # LightningOptimizer.step; this update runs inside the captured step, so it is counted the same way.
        optimizer._on_before_step()
        loss = self.captured_step(images, labels)
        optimizer._on_after_step()
        scheduler = self.lr_schedulers()  # configure_optimizers makes at most one
        if scheduler is not None:
            scheduler.step()  # the captured step copies the new learning rate to the device before its next replay
        return loss

    def on_train_epoch_end(self) -> None:
        if self.captured_step is not None:
            loss, accuracy = self.captured_step.epoch_means()
            self.log("train/loss", loss)
            self.log("train/acc", accuracy)
        else:
            self.log("train/loss", self.train_loss)
            self.log("train/acc", self.train_acc)
        self.log("step", float(self.current_epoch + 1))

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> Tensor | None:
        """Loader 0 is the official test set (its logits are returned, as :meth:`test_step` does); loader 1, when
        present, the validation split."""
        if dataloader_idx == 0:
            return self.test_step(batch, batch_idx)
        images, labels = batch
        self.val_acc.update(self.net(images), labels)
        return None

    def on_validation_epoch_end(self) -> None:
        if self.val_acc.update_count:
            self.log("val/acc", self.val_acc, add_dataloader_idx=False)
        self.log("test/loss", self.test_loss, add_dataloader_idx=False)
        self.log("test/acc", self.test_acc, add_dataloader_idx=False)
        self.log("step", float(self.current_epoch + 1), add_dataloader_idx=False)

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
        steps = int(self.trainer.estimated_stepping_batches)
        if name == "onecycle" and float(schedule["pct_start"] * steps) - 1 == 0:  # OneCycleLR would divide by it
            raise UserError(
                f"scheduler=onecycle cannot warm up over exactly one of this run's {steps} optimizer steps "
                f"(scheduler.pct_start={schedule['pct_start']}); "
                "change scheduler.pct_start, epochs or dataset.batch_size"
            )
        schedule[length_argument] = steps
        scheduler = scheduler_class(optimizer, **schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
