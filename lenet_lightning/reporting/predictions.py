"""One pass over the whole test set at the end of a run, shared by everything that reports on the trained model."""

from dataclasses import dataclass

import torch
from torch import Tensor

from lenet_lightning.data.datamodule import MNISTDataModule, TensorBatches
from lenet_lightning.model.classifier import LeNetClassifier


@dataclass
class TestPredictions:
    """The model's view of the whole test set: labels, predicted classes, probabilities and penultimate features.

    ``probabilities`` and ``features`` are float32 whatever the training precision, as reports and TensorBoard
    take them.
    """

    labels: Tensor
    predicted: Tensor
    confidence: Tensor
    probabilities: Tensor  # N x classes
    features: Tensor  # N x 84: what the last layer reads

    def most_confident_mistakes(self, count: int) -> Tensor:
        """Indices of misclassified examples, the most confidently wrong first."""
        wrong = (self.predicted != self.labels).nonzero().squeeze(1)
        return wrong[self.confidence[wrong].argsort(descending=True)[:count]]


@torch.inference_mode()
def predict_test_set(module: LeNetClassifier, datamodule: MNISTDataModule) -> TestPredictions:
    """One pass over the whole official test set (never sharded, so the counts cover all of it).

    Batches take the module's dtype, so a model trained in float64 (``trainer.precision=64-true``) is analysed too.
    """
    images, labels = datamodule.splits["test"]
    was_training = module.training
    module.eval()
    features, logits = [], []
    for batch, _ in TensorBatches(images, labels, datamodule.eval_batch_size_on(images.device)):
        batch_features, batch_logits = module.features_and_logits(batch.to(module.device, module.dtype))
        features.append(batch_features)
        logits.append(batch_logits)
    module.train(was_training)
    probabilities = torch.cat(logits).softmax(dim=1)
    confidence, predicted = probabilities.max(dim=1)
    return TestPredictions(
        labels=labels.to(predicted.device),
        predicted=predicted,
        confidence=confidence.float(),
        probabilities=probabilities.float(),
        features=torch.cat(features).float(),
    )
