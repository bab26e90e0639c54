"""The confusion matrix and the most confident mistakes: logged at the end of training and by eval."""

from pathlib import Path

import pytest
from omegaconf import open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lenet_lightning.inference.evaluate import evaluate
from lenet_lightning.reporting.error_analysis import CONFUSION_TAG, MISCLASSIFIED_TAG
from lenet_lightning.training.run import fit
from tests.conftest import REAL_DATA_DIR, TINY_TEST, compose_config

PNG_MAGIC = b"\x89PNG"


def images_in(folder: Path) -> dict[str, list]:
    accumulator = EventAccumulator(str(folder), size_guidance={"images": 0})
    accumulator.Reload()
    return {tag: accumulator.Images(tag) for tag in accumulator.Tags()["images"]}


@pytest.fixture(scope="module")
def trained_run(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-epoch run on tiny data with the default callbacks, error analysis included."""
    output_dir = tmp_path_factory.mktemp("error_analysis_run")
    overrides = [f"data_dir={tiny_data_dir}", "epochs=2", "accelerator=cpu", "callbacks.progress_bar.refresh_rate=0"]
    cfg = compose_config("train", *overrides)
    with open_dict(cfg):
        cfg.output_dir = str(output_dir)
    fit(cfg)
    return output_dir


@pytest.mark.slow  # trains beyond the shared tiny run; the figures themselves are checked through eval below
def test_training_ends_with_confusion_matrix_and_mistakes_in_tensorboard_and_pngs(trained_run: Path) -> None:
    logged = images_in(trained_run)
    for tag in (CONFUSION_TAG, MISCLASSIFIED_TAG):
        assert [event.step for event in logged[tag]] == [2], tag  # once, at the last epoch
        assert logged[tag][0].encoded_image_string.startswith(PNG_MAGIC)
        assert (trained_run / f"{tag.split('/')[-1]}.png").read_bytes().startswith(PNG_MAGIC)


def test_eval_on_tiny_test_set_counts_every_example(
    tiny_trained_run: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    checkpoint = str(tiny_trained_run / "checkpoints" / "last.ckpt")
    result = evaluate(checkpoint, data_dir=str(tiny_data_dir), output=str(tmp_path), accelerator="cpu")
    assert sum(map(sum, result["confusion_matrix"])) == TINY_TEST
    assert set(images_in(tmp_path)) == {CONFUSION_TAG, MISCLASSIFIED_TAG}


@pytest.mark.real_data
def test_full_test_set_confusion_matrix_sums_to_10000(tiny_trained_run: Path, tmp_path: Path) -> None:
    # The tiny-data model is evaluated on the real MNIST test set: its accuracy is irrelevant, the counts are not.
    result = evaluate(
        str(tiny_trained_run / "checkpoints" / "last.ckpt"),
        data_dir=REAL_DATA_DIR,
        output=str(tmp_path),
        accelerator="cpu",
    )
    confusion = result["confusion_matrix"]
    assert sum(map(sum, confusion)) == result["test_examples"] == 10_000
    assert [row["total"] for row in result["per_class"]] == [sum(row) for row in confusion]
    assert sum(confusion[i][i] for i in range(10)) / 10_000 == pytest.approx(result["test_acc"], abs=1e-6)
    logged = images_in(tmp_path)
    assert logged[CONFUSION_TAG][0].encoded_image_string.startswith(PNG_MAGIC)
    assert (tmp_path / "confusion_matrix.png").is_file() and (tmp_path / "misclassified.png").is_file()
    # The projector's default sample: 2,000 of the 10,000 test images, one line each after the header.
    metadata = (Path(result["projector"]) / "metadata.tsv").read_text().splitlines()
    assert len(metadata) == 2_001 and len({line.split("\t")[0] for line in metadata[1:]}) == 2_000
