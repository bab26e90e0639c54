"""Classify users' pictures with a trained checkpoint.

Classifies your own pictures: each is converted to look like the data set's images (see ``images.py``),
then classified in batches on the CPU or GPU. Prints one line per picture and optionally writes a CSV,
checked before any picture is read by the rules of ``outputs.py``: never over a picture, the checkpoint, a
run's record or a data set, nor over a file predict did not write unless ``overwrite``.
Torch and Lightning are imported only once there is something to classify, so ``--help`` stays quick.
"""

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from lenet_lightning.errors import UserError
from lenet_lightning.inference.outputs import check_output_file, written_in_full
from lenet_lightning.runs.atomic import write_text_atomically

TOP_K = 3
CSV_COLUMNS = ("file", "prediction", "probability", "top3")


@dataclass
class Prediction:
    """One picture's most likely classes, most likely first."""

    file: Path
    classes: list[str]
    probabilities: list[float]

    @property
    def top(self) -> str:
        return "; ".join(f"{name} {p:.3f}" for name, p in zip(self.classes, self.probabilities, strict=True))

    def row(self) -> dict[str, str]:
        return {
            "file": str(self.file),
            "prediction": self.classes[0],
            "probability": f"{self.probabilities[0]:.4f}",
            "top3": self.top,
        }


def predict(
    ckpt_path: str | None,
    inputs: str | list[str] | None,
    invert: object = "auto",
    batch_size: int = 256,
    accelerator: str = "auto",
    output: str | None = None,
    overwrite: bool = False,
) -> tuple[list[Prediction], list[tuple[Path, str]]]:
    """Predictions for every readable picture in ``inputs``, and the (file, reason) of those skipped.

    ``output``, the CSV :func:`write_csv` will write, is checked first, so a bad one costs no work; ``overwrite``
    lets it replace a file predict did not write.
    """
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from lenet_lightning.data.pictures import STYLES, find_images, load_images, parse_invert
    from lenet_lightning.inference.checkpoint import load_checkpoint
    from lenet_lightning.reporting.console import route_to_logging

    route_to_logging()  # Lightning's device lines to the log config, not as "INFO: ..." on stderr

    paths = find_images(inputs if inputs is not None else [])
    invert_choice = parse_invert(invert)
    loaded = load_checkpoint(ckpt_path)
    if output:
        check_output_file(
            Path(output),
            [*loaded.files_read(), *(("the picture", path) for path in paths)],
            named=True,
            is_own_output=is_earlier_predictions,
            overwrite=overwrite,
            data_folders=loaded.data_folders(),
        )
    pictures = load_images(paths, STYLES[loaded.dataset_name], invert_choice)
    if not pictures.paths:
        path, reason = pictures.failures[0]
        raise UserError(f"none of the {len(paths)} files could be read as a picture ({path}: {reason})")
    trainer = L.Trainer(accelerator=accelerator, devices=1, logger=False, enable_progress_bar=False)
    batches = trainer.predict(loaded.module, dataloaders=DataLoader(pictures.images, batch_size=batch_size))
    probabilities = torch.cat(batches).softmax(dim=1)
    top = probabilities.topk(min(TOP_K, probabilities.shape[1]), dim=1)
    names = loaded.class_names
    predictions = [
        Prediction(file=path, classes=[names[i] for i in indices], probabilities=values.tolist())
        for path, values, indices in zip(pictures.paths, top.values, top.indices.tolist(), strict=True)
    ]
    return predictions, pictures.failures


def is_earlier_predictions(path: Path) -> bool:
    """Whether ``path`` is a CSV predict wrote: its first line is predict's header (predict replaces its own files)."""
    try:
        with path.open(newline="") as file:
            return file.readline(256).rstrip("\r\n") == ",".join(CSV_COLUMNS)
    except (OSError, UnicodeDecodeError):
        return False


def write_csv(predictions: list[Prediction], path: Path) -> None:
    """The predictions as CSV, replacing ``path`` in one step (never half written; a full disk is one line)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(prediction.row() for prediction in predictions)
    with written_in_full(f"output={path}"):
        write_text_atomically(path, text.getvalue())
