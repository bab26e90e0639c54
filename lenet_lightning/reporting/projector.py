"""The PROJECTOR tab: test images as the 84 numbers LeNet's last layer reads, with their classes and thumbnails.

A fixed sample of the test set, the same images in every run whatever its seed (so runs compare), is written
with ``SummaryWriter.add_embedding``: ``projector_config.pbtxt`` in the log folder names ``<step>/test_features/``,
which holds ``tensors.tsv`` (the features, as text), ``metadata.tsv`` (test-set index, true class, predicted
class, whether they agree) and ``sprite.png`` (the thumbnails). A log folder holds one projector, of the model's
latest state: writing one removes what an earlier session wrote (a resumed run, eval run again).
"""

import contextlib
from pathlib import Path

import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from lenet_lightning.reporting.predictions import TestPredictions
from lenet_lightning.reporting.tensorboard_events import forget_embeddings

PROJECTOR_TAG = "test_features"
PROJECTOR_CONFIG = "projector_config.pbtxt"
EMBEDDING_FILES = ("tensors.tsv", "metadata.tsv", "sprite.png")
METADATA_HEADER = ["index", "label", "predicted", "correct"]
SAMPLE_SEED = 84  # the sample's own seed, independent of the run's
DECIMALS = 4  # features are written as text: 4 decimals keep tensors.tsv near 6 bytes a number


def projector_sample(test_size: int, count: int) -> Tensor:
    """Indices of ``count`` test images (all when there are fewer), in test-set order, the same in every run."""
    order = torch.randperm(test_size, generator=torch.Generator().manual_seed(SAMPLE_SEED))
    return order[:count].sort().values


def embedding_folder(step: int) -> str:
    """Where ``add_embedding`` writes this tag's files at ``step``, relative to the log folder."""
    return f"{step:05d}/{PROJECTOR_TAG}"


def projector_files(step: int) -> list[str]:
    """Every file a projector written at ``step`` puts in the log folder."""
    return [PROJECTOR_CONFIG, *(f"{embedding_folder(step)}/{name}" for name in EMBEDDING_FILES)]


def remove_earlier_projectors(folder: Path) -> None:
    """Delete the files of this tag's projectors at any step; folders are removed only once empty."""
    for embedding in folder.glob(f"[0-9][0-9][0-9][0-9][0-9]/{PROJECTOR_TAG}"):
        for name in EMBEDDING_FILES:
            (embedding / name).unlink(missing_ok=True)
        for emptied in (embedding, embedding.parent):
            with contextlib.suppress(OSError):  # it holds something else: not ours to delete
                emptied.rmdir()


def write_projector(
    logger: TensorBoardLogger,
    predictions: TestPredictions,
    images: Tensor,
    class_names: list[str],
    step: int,
    count: int,
) -> Path:
    """Write the features of the sample of ``count`` test ``images`` (uint8, N x 28 x 28); return their folder."""
    folder = Path(logger.log_dir)
    remove_earlier_projectors(folder)
    forget_embeddings(logger)
    sample = projector_sample(len(predictions.labels), count)
    labels, predicted = predictions.labels.cpu()[sample].tolist(), predictions.predicted.cpu()[sample].tolist()
    metadata = [
        [index, class_names[label], class_names[guess], "yes" if label == guess else "no"]
        for index, label, guess in zip(sample.tolist(), labels, predicted, strict=True)
    ]
    # Rounded float64: written with str(), a float32 would take 17 digits, 4 decimals about 6.
    features = predictions.features.cpu()[sample].double().round(decimals=DECIMALS)
    thumbnails = images.cpu()[sample].unsqueeze(1).float().div(255)
    logger.experiment.add_embedding(
        features,
        metadata=metadata,
        label_img=thumbnails,
        global_step=step,
        tag=PROJECTOR_TAG,
        metadata_header=METADATA_HEADER,
    )
    return folder / embedding_folder(step)
