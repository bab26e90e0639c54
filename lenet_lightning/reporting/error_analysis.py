"""What the model gets right and wrong on the test set, from one pass over it at the end of a run.

The confusion matrix and the test images it misclassifies most confidently are drawn with matplotlib's
object-oriented API (no pyplot, so no display is needed and no figure stays open), logged to TensorBoard as
images and saved as PNGs in the run folder. The same pass feeds a precision-recall curve per class
(``reporting/pr_curves.py``) and the projector's sample of features (``reporting/projector.py``).
"""

import math
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix
from torchvision.utils import make_grid

from lenet_lightning.data.datamodule import MNISTDataModule
from lenet_lightning.reporting.pr_curves import write_pr_curves
from lenet_lightning.reporting.predictions import TestPredictions, predict_test_set
from lenet_lightning.reporting.projector import write_projector

CONFUSION_TAG = "test/confusion_matrix"
MISCLASSIFIED_TAG = "test/misclassified"
GRID_COLUMNS = 8
GRID_PADDING = 18  # pixels between grid images, room for their two-line labels


def confusion_matrix(predictions: TestPredictions, num_classes: int) -> Tensor:
    """Counts of (true class, predicted class) pairs; rows are true classes."""
    # Every process holds the whole test set here: syncing across processes would wait for ranks that never call it.
    metric = MulticlassConfusionMatrix(num_classes, sync_on_compute=False).to(predictions.predicted.device)
    metric.update(predictions.predicted, predictions.labels)
    return metric.compute().cpu()


def confusion_figure(confusion: Tensor, class_names: list[str], title: str) -> Figure:
    figure = Figure(figsize=(9, 8), layout="constrained")
    axes = figure.add_subplot()
    MulticlassConfusionMatrix(len(class_names)).plot(val=confusion, ax=axes, labels=class_names, cmap="Blues")
    axes.set_title(title, fontsize=14)
    return figure


def mistakes_figure(images: Tensor, indices: Tensor, predictions: TestPredictions, class_names: list[str]) -> Figure:
    """A grid of test images with their true label and the model's (wrong) prediction and probability.

    One image drawn with ``make_grid`` and labelled with text: a subplot per image costs seconds to render.
    """
    rows = max(1, math.ceil(len(indices) / GRID_COLUMNS))
    cell = images.shape[-1] + GRID_PADDING
    grid = make_grid(
        images[indices.to(images.device)].unsqueeze(1).cpu(), nrow=GRID_COLUMNS, padding=GRID_PADDING, pad_value=48
    )
    figure = Figure(figsize=(GRID_COLUMNS * 1.6, rows * 1.6 + 0.4), layout="constrained")
    axes = figure.add_subplot()
    axes.imshow(grid[0].numpy(), cmap="gray", vmin=0, vmax=255)
    axes.set_axis_off()
    axes.set_title("Most confident mistakes on the test set")
    for position, index in enumerate(indices.tolist()):
        true_name = class_names[int(predictions.labels[index])]
        predicted_name = class_names[int(predictions.predicted[index])]
        confidence = float(predictions.confidence[index])
        x = (position % GRID_COLUMNS) * cell + GRID_PADDING + images.shape[-1] / 2
        y = (position // GRID_COLUMNS) * cell + GRID_PADDING - 1
        label = f"true: {true_name}\npred: {predicted_name} {confidence:.2f}"
        axes.text(x, y, label, color="white", fontsize=7, ha="center", va="bottom")
    return figure


def render(figure: Figure) -> np.ndarray:
    """Draw a figure once into an H x W x 3 array, for both the PNG file and TensorBoard."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class ErrorAnalysis(L.Callback):
    """After training (and after ``trainer.test``): what the model gets right and wrong on the whole test set.

    Logged to TensorBoard as ``test/confusion_matrix`` and ``test/misclassified`` and saved as
    ``confusion_matrix.png`` and ``misclassified.png`` in the trainer's log folder (the run folder). With
    ``pr_curves``, a precision-recall curve per class (``test/pr_curve/<class>``); with ``projector_images``
    above 0, that many test images' features for the projector. All at the last epoch's step, by rank 0 alone.
    """

    def __init__(self, num_examples: int = 32, pr_curves: bool = True, projector_images: int = 2000) -> None:
        self.num_examples = num_examples
        self.pr_curves = pr_curves
        self.projector_images = projector_images
        self.predictions: TestPredictions | None = None
        self.confusion: Tensor | None = None
        self.saved: list[Path] = []
        self.projector: Path | None = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.analyse(trainer, pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.analyse(trainer, pl_module)

    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = Path(trainer.log_dir or trainer.default_root_dir)  # log_dir is a broadcast: every rank asks
        if not trainer.is_global_zero:
            return
        datamodule: MNISTDataModule = trainer.datamodule
        class_names = datamodule.classes
        images = datamodule.splits["test"][0]
        predictions = self.predictions = predict_test_set(pl_module, datamodule)
        self.confusion = confusion_matrix(predictions, len(class_names))
        accuracy = float(self.confusion.diag().sum() / self.confusion.sum())
        title = f"{datamodule.dataset_class.__name__} test set: accuracy {accuracy:.4f}"
        mistakes = predictions.most_confident_mistakes(self.num_examples)
        figures = {CONFUSION_TAG: confusion_figure(self.confusion, class_names, title)}
        if len(mistakes):  # a perfect score leaves no mistakes to show
            figures[MISCLASSIFIED_TAG] = mistakes_figure(images, mistakes, predictions, class_names)
        folder.mkdir(parents=True, exist_ok=True)
        self.saved, self.projector = [], None
        loggers = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        for tag, figure in figures.items():
            pixels = render(figure)
            path = folder / f"{tag.split('/')[-1]}.png"
            Image.fromarray(pixels).save(path)
            self.saved.append(path)
            for logger in loggers:
                logger.experiment.add_image(tag, pixels, global_step=trainer.current_epoch, dataformats="HWC")
        for logger in loggers:
            if self.pr_curves:
                write_pr_curves(logger.experiment, predictions, class_names, trainer.current_epoch)
            if self.projector_images:
                self.projector = write_projector(
                    logger, predictions, images, class_names, trainer.current_epoch, self.projector_images
                )
            logger.experiment.flush()
