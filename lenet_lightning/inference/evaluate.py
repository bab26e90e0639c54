"""Evaluate a checkpoint on the official test set with the training metrics.

Evaluates a checkpoint on the official test set with the same metrics as training (so its test acc is
the run's final test acc), prints a per-class table (accuracy and average precision), writes ``eval.json``
and draws the confusion matrix and the most confident mistakes; its TensorBoard events hold those, a
precision-recall curve per class and the projector's sample of features. Torch and Lightning are imported
only once a checkpoint is evaluated, so ``--help`` stays quick. The output folder is checked before the test
set is read, by the rules of ``outputs.py``: never a run's own folder or a folder of someone else's files
(unless ``overwrite``), never over a file eval reads, and with room to write.
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lenet_lightning.inference.outputs import check_output_folder, written_in_full
from lenet_lightning.runs.atomic import write_text_atomically

if TYPE_CHECKING:
    from lenet_lightning.data.datamodule import MNISTDataModule
    from lenet_lightning.reporting.error_analysis import ErrorAnalysis

EVAL_JSON = "eval.json"
EVAL_STEP = 0  # eval's Trainer starts at epoch 0, the step its figures, curves and projector are logged at


def evaluate(
    ckpt_path: str | None,
    data_dir: str | None = None,
    output: str | None = None,
    accelerator: str = "auto",
    pr_curves: bool = True,
    projector_images: int = 2000,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Test loss and acc, per-class accuracy and AP, confusion matrix of a checkpoint; ``eval.json``, figures and
    events in ``output``.

    ``pr_curves`` and ``projector_images`` (0: none) say what goes to TensorBoard besides the figures;
    ``overwrite`` lets a named ``output`` that holds files eval did not write receive its files.
    """
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    from lenet_lightning.inference.checkpoint import load_checkpoint
    from lenet_lightning.reporting.console import route_to_logging
    from lenet_lightning.reporting.error_analysis import CONFUSION_TAG, MISCLASSIFIED_TAG, ErrorAnalysis
    from lenet_lightning.reporting.projector import EMBEDDING_FILES, PROJECTOR_TAG, projector_files

    route_to_logging()  # Lightning's device lines to the log config, not as "INFO: ..." on stderr

    loaded = load_checkpoint(ckpt_path)
    datamodule = loaded.datamodule(data_dir)
    # The default folder <run>/eval/<checkpoint>/ is eval's own: running eval again replaces what it wrote there.
    output_dir = Path(output) if output else loaded.output_dir("eval")
    figures = [f"{tag.split('/')[-1]}.png" for tag in (CONFUSION_TAG, MISCLASSIFIED_TAG)]  # as ErrorAnalysis names them
    logged = [TensorBoardLogger.NAME_HPARAMS_FILE, *(projector_files(EVAL_STEP) if projector_images else [])]
    written = [EVAL_JSON, *figures, *logged]
    # Writing a projector deletes those of every step in the folder (reporting/projector.py): only ours may be there.
    removed = output_dir.glob(f"[0-9][0-9][0-9][0-9][0-9]/{PROJECTOR_TAG}/*") if projector_images else []
    check_output_folder(
        output_dir,
        written,
        loaded.files_read(datamodule),
        named=bool(output),
        is_own_output=is_earlier_eval,
        overwrite=overwrite,
        data_folders=loaded.data_folders(datamodule),
        removes=[str(path.relative_to(output_dir)) for path in removed if path.name in EMBEDDING_FILES],
    )
    analysis = ErrorAnalysis(pr_curves=pr_curves, projector_images=projector_images)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=TensorBoardLogger(save_dir=output_dir, name="", version="", default_hp_metric=False),
        callbacks=[analysis],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with written_in_full(f"the eval results to {output_dir}", output_dir):
        metrics = trainer.test(loaded.module, datamodule=datamodule, verbose=False)[0]
        result = summary(loaded.path, datamodule, metrics, analysis, output_dir)
        write_text_atomically(output_dir / EVAL_JSON, json.dumps(result, indent=2) + "\n")
    return result


def summary(
    checkpoint: Path,
    datamodule: "MNISTDataModule",
    metrics: dict[str, float],
    analysis: "ErrorAnalysis",
    output_dir: Path,
) -> dict[str, Any]:
    """What ``eval.json`` holds: the metrics, the per-class table, the confusion matrix and where the files are."""
    from lenet_lightning.reporting.pr_curves import average_precision

    confusion = analysis.confusion
    correct, totals = confusion.diag(), confusion.sum(dim=1)
    precisions = average_precision(analysis.predictions)
    return {
        "checkpoint": str(checkpoint),
        "dataset": datamodule.name,
        "test_examples": int(confusion.sum()),
        "test_loss": metrics["test/loss"],
        "test_acc": metrics["test/acc"],
        "per_class": [
            {
                "class": name,
                "correct": int(right),
                "total": int(total),
                "accuracy": float(right / total),
                "average_precision": float(precision),
            }
            for name, right, total, precision in zip(datamodule.classes, correct, totals, precisions, strict=True)
        ],
        "confusion_matrix": confusion.tolist(),
        "figures": [str(path) for path in analysis.saved],
        "projector": str(analysis.projector) if analysis.projector else None,
        "output_dir": str(output_dir),
    }


def is_earlier_eval(folder: Path) -> bool:
    """Whether ``folder`` holds eval's results: an ``eval.json`` that reads as one (eval replaces its own files)."""
    try:
        written = json.loads((folder / EVAL_JSON).read_text())
    except (OSError, ValueError):  # none, unreadable, or not JSON (UnicodeDecodeError is a ValueError)
        return False
    return isinstance(written, dict) and {"checkpoint", "test_acc", "per_class"} <= written.keys()


def report_lines(result: dict[str, Any]) -> list[str]:
    """The console report: overall metrics, then one row per class."""
    width = max(len(row["class"]) for row in result["per_class"])
    lines = [
        f"checkpoint: {result['checkpoint']} ({result['dataset']})",
        f"test loss {result['test_loss']:.4f}, test acc {result['test_acc']:.4f} "
        f"on {result['test_examples']} test images",
        "",
        f"{'class':<{width}}  correct  total  accuracy  avg precision",
    ]
    lines += [
        f"{row['class']:<{width}}  {row['correct']:>7}  {row['total']:>5}  {row['accuracy']:>8.4f}  "
        f"{row['average_precision']:>13.4f}"
        for row in result["per_class"]
    ]
    lines += [
        "",
        f"figures: {', '.join(result['figures'])}",
        *([f"projector: {result['projector']}"] if result["projector"] else []),
        f"metrics: {Path(result['output_dir']) / EVAL_JSON}",
        f"view in TensorBoard: tensorboard --logdir {result['output_dir']}",
    ]
    return lines
