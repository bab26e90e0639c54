"""The PR CURVES tab: each class against all the others on the test set, and the average precision it sums up to."""

from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torchmetrics.functional.classification import multiclass_average_precision

from lenet_lightning.reporting.predictions import TestPredictions

PR_CURVE_TAG = "test/pr_curve"  # one curve per class: test/pr_curve/<class name>


def write_pr_curves(writer: SummaryWriter, predictions: TestPredictions, class_names: list[str], step: int) -> None:
    """One precision-recall curve per class: its probability as the score, "is this class" as the truth."""
    labels = predictions.labels.cpu()
    probabilities = predictions.probabilities.cpu()
    for index, name in enumerate(class_names):
        writer.add_pr_curve(f"{PR_CURVE_TAG}/{name}", labels == index, probabilities[:, index], global_step=step)


def average_precision(predictions: TestPredictions) -> Tensor:
    """Per class, the area under its precision-recall curve (exact, over every threshold): 1 is a perfect ranking."""
    num_classes = predictions.probabilities.shape[1]
    return multiclass_average_precision(
        predictions.probabilities, predictions.labels, num_classes, average="none", thresholds=None
    ).cpu()
