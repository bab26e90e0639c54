"""The whole training step as one CUDA graph: forward, loss, backward, SGD update and the epoch's metric sums.

On a GPU a LeNet step is a few dozen kernels of microseconds each, so launching them from Python sets the
pace, not the arithmetic. Captured once and replayed, the step costs two input copies and one launch.
``compile=reduce-overhead`` graphs the network only; the update and the metrics stay eager there.
"""

from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from lenet_lightning.errors import UserError
from lenet_lightning.model.classifier import LeNetClassifier

# What a captured SGD update keeps as it was at capture (the learning rate alone is read from a device tensor).
FIXED_HYPERPARAMETERS = ("momentum", "dampening", "nesterov", "weight_decay", "maximize")
# Eager steps before the capture: by then cuBLAS/cuDNN have their handles and workspaces and the optimizer its
# momentum buffers, none of which may be created inside a capture (torch's CUDA-graph notes warm up the same way).
WARM_UP_STEPS = 3


class CapturedTrainingStep:
    """Train ``net`` with ``optimizer`` one batch per call, replaying one CUDA graph for batches of one size.

    The first batch's size is the graph's: its first :data:`WARM_UP_STEPS` batches train eagerly on a side
    stream, the next is captured and replayed, and so are all later ones of that size. A batch of another
    size (an epoch's last) trains eagerly through the same code, so every step makes the update the eager
    path makes, up to float rounding. On CPU tensors every step runs eagerly (there is no graph to capture).

    The update is ``optimizer``'s (torch.optim.SGD), switched to its fused kernel: the foreach one reads a
    tensor learning rate back to the host, which a capture refuses. The graph reads the learning rate from a
    device tensor, refilled from the param group's number before a replay whenever a scheduler changed it;
    the param groups keep plain numbers, so schedulers and checkpoints see what they see in eager runs. The
    other SGD hyperparameters stay as captured: a replay after one of them changed raises instead.

    The epoch's loss sum and correct count accumulate in device tensors that the graph writes into; read them
    once per epoch (:meth:`epoch_means`), not per step. torchmetrics cannot be captured here: its
    ``reset()`` replaces its state tensors, while a graph keeps writing to the ones it was captured with.
    Dropout draws its masks from the graph's own offsets of the CUDA generator, so a graphed run's masks
    differ from an eager run's.
    """

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if not isinstance(optimizer, torch.optim.SGD):
            raise TypeError(f"a captured training step needs torch.optim.SGD, not {type(optimizer).__name__}")
        for group in optimizer.param_groups:
            group["fused"], group["foreach"] = True, False
        self.net, self.optimizer = net, optimizer
        device = next(net.parameters()).device
        self._learning_rates = [torch.tensor(float(group["lr"]), device=device) for group in optimizer.param_groups]
        self._filled_learning_rates = [float(group["lr"]) for group in optimizer.param_groups]
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.examples = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self._graph_batch_size: int | None = None
        self._warm_up_steps_left = WARM_UP_STEPS
        self._static: tuple[Tensor, Tensor, Tensor] | None = None  # the graph's images, labels and mean loss
        self._captured_hyperparameters: list[tuple[Any, ...]] = []

    def __call__(self, images: Tensor, labels: Tensor) -> Tensor:
        """Train on one batch and return its mean loss (a device tensor: reading it waits for the step)."""
        loss = self._train(images, labels)
        self.examples += len(labels)
        return loss

    def _train(self, images: Tensor, labels: Tensor) -> Tensor:
        if self._graph_batch_size is None:
            self._graph_batch_size = len(labels)
        if not images.is_cuda or len(labels) != self._graph_batch_size:
            return self._eager_step(images, labels)
        if self._static is not None:
            static_images, static_labels, static_loss = self._static
            if self._fixed_hyperparameters() != self._captured_hyperparameters:
                raise RuntimeError(
                    "the optimizer's momentum, dampening, nesterov, weight decay or maximize changed after the "
                    "training step was captured; only the learning rate may change"
                )
            static_images.copy_(images)
            static_labels.copy_(labels)
            self._fill_learning_rates()
            self.graph.replay()
            return static_loss
        if self._warm_up_steps_left:
            self._warm_up_steps_left -= 1
            return self._eager_step_on_side_stream(images, labels)
        return self._capture(images, labels)

    def epoch_means(self) -> tuple[Tensor, Tensor]:
        """The mean loss and accuracy over the examples trained on since the last call, which starts a new sum."""
        loss, accuracy = self.loss_sum / self.examples, self.correct / self.examples
        self.loss_sum.zero_()
        self.correct.zero_()
        self.examples = 0
        return loss, accuracy

    def _step(self, images: Tensor, labels: Tensor) -> Tensor:
        """Forward, backward, update and metric sums, onto gradients that are None (backward allocates them)."""
        logits = self.net(images)
        losses = F.cross_entropy(logits, labels, reduction="none")
        loss = losses.mean()
        loss.backward()
        self.optimizer.step()
        self.loss_sum.add_(losses.detach().sum())
        self.correct.add_((logits.detach().argmax(dim=1) == labels).sum())
        return loss.detach()

    def _eager_step(self, images: Tensor, labels: Tensor) -> Tensor:
        # After a capture the gradients are the graph's own tensors; dropping them leaves their memory in the
        # graph's pool, where the replays keep writing them.
        self.optimizer.zero_grad(set_to_none=True)
        return self._step(images, labels)

    def _eager_step_on_side_stream(self, images: Tensor, labels: Tensor) -> Tensor:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            loss = self._eager_step(images, labels)
        torch.cuda.current_stream().wait_stream(side)
        return loss

    def _fixed_hyperparameters(self) -> list[tuple[Any, ...]]:
        return [tuple(group[key] for key in FIXED_HYPERPARAMETERS) for group in self.optimizer.param_groups]

    def _fill_learning_rates(self) -> None:
        """Copy changed learning rates into the tensors the graph reads (a kernel launch each, no host sync)."""
        for index, group in enumerate(self.optimizer.param_groups):
            if group["lr"] != self._filled_learning_rates[index]:
                self._learning_rates[index].fill_(group["lr"])
                self._filled_learning_rates[index] = group["lr"]

    def _capture(self, images: Tensor, labels: Tensor) -> Tensor:
        static_images, static_labels = images.clone(), labels.clone()
        self.optimizer.zero_grad(set_to_none=True)
        self._fill_learning_rates()
        groups = self.optimizer.param_groups
        numbers = [group["lr"] for group in groups]
        for group, lr in zip(groups, self._learning_rates, strict=True):
            group["lr"] = lr  # only while capturing: the graph keeps reading this tensor
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                static_loss = self._step(static_images, static_labels)
        finally:
            for group, number in zip(groups, numbers, strict=True):
                group["lr"] = number
        self.graph, self._static = graph, (static_images, static_labels, static_loss)
        self._captured_hyperparameters = self._fixed_hyperparameters()
        graph.replay()  # a capture records the kernels without running them: this batch trains now
        return static_loss


class GraphedClassifier(LeNetClassifier):
    """The recipe's LightningModule trained through a :class:`CapturedTrainingStep` (``cuda_graph=true``).

    Manual optimization: each batch goes to the captured step, whose device-side sums give ``train/loss`` and
    ``train/acc`` once per epoch. Evaluation, the optimizer, the schedule and checkpoints are the recipe's own, so
    its checkpoints load as a plain :class:`LeNetClassifier` and resume either way.
    """

    def __init__(self, **hyper_parameters: Any) -> None:
        super().__init__(**hyper_parameters)
        self.automatic_optimization = False
        self.captured_step: CapturedTrainingStep | None = None  # made in on_train_start

    @classmethod
    def of(cls, module: LeNetClassifier) -> "GraphedClassifier":
        """The same network and hyper-parameters, trained through the captured step."""
        graphed = cls(**module.hparams)
        graphed.load_state_dict(module.state_dict())
        return graphed

    def on_train_start(self) -> None:
        # Here, after a resumed run's optimizer state is restored: restoring replaces the param groups.
        self.captured_step = CapturedTrainingStep(self.net, self.optimizers().optimizer)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        optimizer = self.optimizers()
        # Lightning counts optimizer steps (the global step, which checkpoints and loggers read) around
        # LightningOptimizer.step; this update runs inside the captured step, so it is counted the same way.
        optimizer._on_before_step()
        loss = self.captured_step(self.augmented(images), labels)
        optimizer._on_after_step()
        scheduler = self.lr_schedulers()  # configure_optimizers makes at most one
        if scheduler is not None:
            scheduler.step()  # the captured step copies the new learning rate to the device before its next replay
        return loss

    def on_train_epoch_end(self) -> None:
        loss, accuracy = self.captured_step.epoch_means()
        self.log("train/loss", loss)
        self.log("train/acc", accuracy)
        self.log_epoch_as_step()


def refuse_unsupported_cuda_graph(cfg: DictConfig) -> None:
    """``cuda_graph=true`` trains on one GPU in float32, uncompiled: refuse anything else in one line, early."""
    if not cfg.cuda_graph:
        return
    trainer: DictConfig = cfg.trainer
    accelerator = str(trainer.get("accelerator", cfg.accelerator))
    if accelerator == "cpu":
        raise UserError("cuda_graph=true trains on a GPU only; use accelerator=gpu, or cuda_graph=false on the CPU")
    if accelerator not in ("gpu", "cuda", "auto"):
        raise UserError(f"cuda_graph=true needs an NVIDIA GPU, not accelerator={accelerator}; use cuda_graph=false")
    if not torch.cuda.is_available():
        raise UserError("cuda_graph=true but no GPU is visible on this machine; use cuda_graph=false")
    strategy = trainer.get("strategy", "auto")
    if trainer.get("num_nodes", 1) != 1 or requested_devices(trainer.get("devices", 1)) != 1 or strategy != "auto":
        raise UserError(
            "cuda_graph=true trains on one GPU in one process; use trainer=default (trainer.devices=1), "
            "or cuda_graph=false for several"
        )
    if cfg.compile:
        raise UserError(f"cuda_graph=true already graphs the whole step; drop compile={cfg.compile}")
    if cfg.scheduler.get("cycle_momentum"):
        raise UserError(
            "cuda_graph=true keeps the momentum it was captured with; use scheduler.cycle_momentum=false "
            "(the learning rate may follow any schedule)"
        )
    if str(trainer.get("precision", "32-true")) not in ("32-true", "32"):
        raise UserError(
            f"cuda_graph=true trains in float32; use trainer.precision=32-true instead of {trainer.precision}"
        )


def requested_devices(devices: Any) -> int:
    """How many devices Lightning's ``devices`` asks for: a count, a list or comma-separated string of indices,
    or ``auto``/``-1`` (every visible GPU)."""
    if isinstance(devices, str) and devices not in ("auto", "-1"):
        return len([index for index in devices.split(",") if index.strip()]) if "," in devices else int(devices)
    if devices in ("auto", "-1", -1):
        return torch.cuda.device_count()
    return devices if isinstance(devices, int) else len(devices)
