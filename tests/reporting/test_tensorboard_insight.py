"""What the network learned, in TensorBoard: per-class test accuracy every epoch, PR curves and the projector.

Read back with TensorBoard's own reader and through a real ``tensorboard`` server's HTTP API, and held against
the predictions of the run's own checkpoint.
"""

import io
import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from omegaconf import open_dict
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig
from tensorboard.util import tensor_util
from torchvision.datasets import MNIST

from lenet_lightning.data.datamodule import MNISTDataModule, to_network_input
from lenet_lightning.errors import UserError
from lenet_lightning.inference.evaluate import evaluate, report_lines
from lenet_lightning.model.classifier import LeNetClassifier
from lenet_lightning.reporting.per_class_accuracy import PER_CLASS_TAG
from lenet_lightning.reporting.plots import run_curves_figure
from lenet_lightning.reporting.pr_curves import PR_CURVE_TAG
from lenet_lightning.reporting.projector import PROJECTOR_CONFIG, PROJECTOR_TAG, projector_sample
from lenet_lightning.speed.cpu_layers import convert_to_fast_cpu_layers
from lenet_lightning.training.run import fit
from tests.conftest import TINY_TEST, compose_config, made_once

EPOCHS = 2
SAMPLE = 100  # fewer than the 128 tiny test images, so the sample is a real choice
NAMES = list(MNIST.classes)
THRESHOLDS = 127  # SummaryWriter.add_pr_curve's default
# ReLU at lr 0.1 in batches of 64 gets about half the classes right after 2 epochs: the classes differ.
RECIPE = (
    "accelerator=cpu",
    "model.activation=relu",
    "lr=0.1",
    "dataset.batch_size=64",
    "callbacks.progress_bar.refresh_rate=0",
    f"callbacks.error_analysis.projector_images={SAMPLE}",
)
ODD_TEST_SIZE = 101  # split 51/50 between two processes


def train(data_dir: Path, folder: Path, *overrides: str) -> Path:
    """Train on tiny data into ``folder`` with the default callbacks and ``RECIPE``; return the folder."""
    cfg = compose_config("train", f"data_dir={data_dir}", *RECIPE, *overrides)
    with open_dict(cfg):
        cfg.output_dir = str(folder)
    assert fit(cfg).status == "completed"
    return folder


@pytest.fixture(scope="session")
def insight_run(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    def make(folder: Path) -> None:
        folder.mkdir()
        train(tiny_data_dir, folder, f"epochs={EPOCHS}")

    return made_once(tmp_path_factory, "insight_run", make)


def tiny_test_set(data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    datamodule = MNISTDataModule(data_dir=str(data_dir))
    datamodule.setup()
    return datamodule.splits["test"]


def checkpoint_outputs(run: Path, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The final model's penultimate features (what its last layer reads) and probabilities, by a plain forward."""
    module = LeNetClassifier.load_from_checkpoint(run / "checkpoints" / "last.ckpt", weights_only=True).eval()
    seen = []
    hook = module.net.classifier[-1].register_forward_pre_hook(lambda layer, inputs: seen.append(inputs[0]))
    with torch.no_grad():
        probabilities = module(to_network_input(images)).softmax(dim=1)
    hook.remove()
    return seen[0], probabilities


def scalars(run: Path) -> dict[str, dict[int, float]]:
    accumulator = EventAccumulator(str(run), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: {e.step: e.value for e in accumulator.Scalars(tag)} for tag in accumulator.Tags()["scalars"]}


def pr_curves(folder: Path) -> dict[str, list]:
    """PR-curve events by tag (the plugin's tensors), every one kept."""
    accumulator = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    accumulator.Reload()
    tags = [tag for tag in accumulator.Tags()["tensors"] if tag.startswith(PR_CURVE_TAG)]
    return {tag: accumulator.Tensors(tag) for tag in tags}


def read_projector(folder: Path) -> tuple[ProjectorConfig, np.ndarray, list[list[str]]]:
    """The projector config, the features it names and the metadata rows (header first)."""
    config = text_format.Parse((folder / PROJECTOR_CONFIG).read_text(), ProjectorConfig())
    (embedding,) = config.embeddings
    features = np.loadtxt(folder / embedding.tensor_path, delimiter="\t", ndmin=2)
    rows = [line.split("\t") for line in (folder / embedding.metadata_path).read_text().splitlines()]
    return config, features, rows


def expected_curve(probabilities: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """True and false positives at each of the 127 thresholds, counted directly: a score counts from its bucket down."""
    buckets = np.floor(probabilities * (THRESHOLDS - 1))
    above = buckets[None, :] >= np.arange(THRESHOLDS)[:, None]
    return np.stack([(above & positive).sum(axis=1), (above & ~positive).sum(axis=1)])


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """The mean, over the positives, of the precision among the scores ranked down to each of them."""
    ranked = positive[np.argsort(-scores, kind="stable")]
    hits = np.cumsum(ranked)
    return float((hits / np.arange(1, len(ranked) + 1))[ranked].mean())


def test_features_and_logits_are_the_last_layers_input_and_the_forward_pass() -> None:
    torch.manual_seed(0)
    images = torch.rand(5, 1, 28, 28)
    for fast in (False, True):
        module = LeNetClassifier(net={}, optimizer={"lr": 0.1}).eval()
        if fast:  # training swaps in the CPU layers, whose activations write over their input
            convert_to_fast_cpu_layers(module.net)
        seen = []
        module.net.classifier[-1].register_forward_pre_hook(lambda layer, inputs, seen=seen: seen.append(inputs[0]))
        with torch.no_grad():
            logits = module(images)
            features, same_logits = module.features_and_logits(images)
        assert features.shape == (5, 84)
        torch.testing.assert_close(features, seen[0], rtol=0, atol=0)
        torch.testing.assert_close(same_logits, logits, rtol=0, atol=0)


def test_projector_sample_is_fixed_and_independent_of_the_global_seed() -> None:
    samples = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        samples.append(projector_sample(10_000, 2_000))
    assert torch.equal(samples[0], samples[1])
    assert len(samples[0].unique()) == 2_000 and samples[0].max() > 9_000  # spread over the whole test set
    assert torch.equal(samples[0], samples[0].sort().values)  # in test-set order
    assert torch.equal(projector_sample(128, 2_000), torch.arange(128))  # fewer images than asked: all of them


def test_per_class_accuracy_every_epoch_adds_up_to_test_acc(insight_run: Path, tiny_data_dir: Path) -> None:
    images, labels = tiny_test_set(tiny_data_dir)
    counts = torch.bincount(labels, minlength=10).double()
    logged = scalars(insight_run)
    per_class = {name: logged[f"{PER_CLASS_TAG}/{name}"] for name in NAMES}
    for epoch in range(1, EPOCHS + 1):
        assert all(sorted(curve) == list(range(1, EPOCHS + 1)) for curve in per_class.values())
        accuracies = torch.tensor([per_class[name][epoch] for name in NAMES], dtype=torch.float64)
        assert float((accuracies * counts).sum() / TINY_TEST) == pytest.approx(logged["test/acc"][epoch], abs=1e-6)
    _, probabilities = checkpoint_outputs(insight_run, images)
    predicted = probabilities.argmax(dim=1)
    expected = [float((predicted[labels == index] == index).double().mean()) for index in range(10)]
    final = [per_class[name][EPOCHS] for name in NAMES]
    assert final == pytest.approx(expected, abs=1e-6)
    assert len(set(final)) > 1, final  # the classes really differ


def test_pr_curve_per_class_at_the_last_epoch_from_the_final_model(insight_run: Path, tiny_data_dir: Path) -> None:
    images, labels = tiny_test_set(tiny_data_dir)
    _, probabilities = checkpoint_outputs(insight_run, images)
    curves = pr_curves(insight_run)
    assert sorted(curves) == sorted(f"{PR_CURVE_TAG}/{name}" for name in NAMES)
    for index, name in enumerate(NAMES):
        (event,) = curves[f"{PR_CURVE_TAG}/{name}"]
        assert event.step == EPOCHS
        curve = tensor_util.make_ndarray(event.tensor_proto)  # tp, fp, tn, fn, precision, recall x thresholds
        positive = (labels == index).numpy()
        np.testing.assert_array_equal(curve[:2], expected_curve(probabilities[:, index].numpy(), positive))
        assert curve[0, 0] == positive.sum() and curve[0, 0] + curve[1, 0] == TINY_TEST  # threshold 0: all


def test_projector_holds_the_fixed_sample_with_features_classes_and_thumbnails(
    insight_run: Path, tiny_data_dir: Path
) -> None:
    images, labels = tiny_test_set(tiny_data_dir)
    config, features, rows = read_projector(insight_run)
    (embedding,) = config.embeddings
    assert embedding.tensor_name == f"{PROJECTOR_TAG}:{EPOCHS:05d}"
    assert rows[0] == ["index", "label", "predicted", "correct"]
    indices = [int(row[0]) for row in rows[1:]]
    assert indices == projector_sample(TINY_TEST, SAMPLE).tolist() and len(set(indices)) == SAMPLE
    expected_features, probabilities = checkpoint_outputs(insight_run, images)
    assert features.shape == (SAMPLE, 84)
    np.testing.assert_allclose(features, expected_features[indices].numpy(), rtol=0, atol=1e-4)  # 4 decimals
    predicted = probabilities.argmax(dim=1)
    assert [row[1] for row in rows[1:]] == [NAMES[labels[i]] for i in indices]
    assert [row[2] for row in rows[1:]] == [NAMES[predicted[i]] for i in indices]
    assert [row[3] for row in rows[1:]] == ["yes" if labels[i] == predicted[i] else "no" for i in indices]
    sprite = np.asarray(Image.open(insight_run / embedding.sprite.image_path).convert("L"))
    assert list(embedding.sprite.single_image_dim) == [28, 28]
    assert sprite.shape == (280, 280)  # a square of 10 x 10 thumbnails
    for position in (0, 1, SAMPLE - 1):  # row by row, in sample order
        row, column = divmod(position, 10)
        thumbnail = sprite[28 * row : 28 * (row + 1), 28 * column : 28 * (column + 1)].astype(int)
        assert np.abs(thumbnail - images[indices[position]].numpy()).max() <= 1


def test_curves_png_has_the_loss_and_the_accuracies_on_labelled_axes_of_their_own(insight_run: Path) -> None:
    figure = run_curves_figure(insight_run)
    loss_axes, acc_axes = figure.axes
    assert loss_axes.get_ylabel() == "cross-entropy loss" and acc_axes.get_ylabel() == "accuracy"
    assert loss_axes.get_ylim()[0] == 0 and loss_axes.get_ylim()[1] >= 2.3
    assert acc_axes.get_ylim() == (0, 1)
    assert [line.get_label() for line in loss_axes.lines] == ["train loss"]
    assert [line.get_label() for line in acc_axes.lines] == ["train acc", "test acc"]
    logged = scalars(insight_run)
    assert list(loss_axes.lines[0].get_ydata()) == [logged["train/loss"][epoch] for epoch in (1, 2)]
    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == ["train loss", "train acc", "test acc"]
    assert len({line.get_color() for line in loss_axes.lines + acc_axes.lines}) == 3


@pytest.mark.slow
def test_eval_writes_projector_pr_curves_and_average_precision(
    insight_run: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    result = evaluate(
        str(insight_run / "checkpoints" / "last.ckpt"),
        data_dir=str(tiny_data_dir),
        output=str(tmp_path),
        accelerator="cpu",
    )
    images, labels = tiny_test_set(tiny_data_dir)
    _, probabilities = checkpoint_outputs(insight_run, images)
    for index, row in enumerate(result["per_class"]):
        positive = (labels == index).numpy()
        expected = average_precision(probabilities[:, index].numpy(), positive)
        assert row["average_precision"] == pytest.approx(expected, abs=1e-6)
    assert any(
        f"{row['average_precision']:.4f}" in line for line in report_lines(result) for row in result["per_class"]
    )
    assert result["projector"] == str(tmp_path / "00000" / PROJECTOR_TAG)
    config, features, rows = read_projector(tmp_path)
    assert config.embeddings[0].tensor_name == f"{PROJECTOR_TAG}:00000"
    assert features.shape == (TINY_TEST, 84) and len(rows) == TINY_TEST + 1  # 2,000 asked, 128 there
    assert [event.step for events in pr_curves(tmp_path).values() for event in events] == [0] * 10


def test_eval_refuses_an_output_where_a_file_blocks_the_projector_before_any_work(
    insight_run: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "00000").write_text("a user's notes")
    with pytest.raises(UserError, match="00000 is a file"):
        evaluate(str(insight_run), data_dir=str(tiny_data_dir), output=str(tmp_path), accelerator="cpu")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["00000"]
    assert (tmp_path / "00000").read_text() == "a user's notes"


@pytest.mark.slow
def test_eval_off_switches_leave_out_the_projector_and_the_pr_curves(
    insight_run: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    result = evaluate(
        str(insight_run),
        data_dir=str(tiny_data_dir),
        output=str(tmp_path),
        accelerator="cpu",
        pr_curves=False,
        projector_images=0,
    )
    assert result["projector"] is None and not any(line.startswith("projector:") for line in report_lines(result))
    assert pr_curves(tmp_path) == {}
    assert not (tmp_path / PROJECTOR_CONFIG).exists() and not (tmp_path / "00000").exists()
    assert all(0 <= row["average_precision"] <= 1 for row in result["per_class"])  # eval.json keeps the numbers


@pytest.mark.slow
def test_off_switches_and_the_same_sample_whatever_the_seed(
    insight_run: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    other = train(
        tiny_data_dir,
        tmp_path / "other",
        "epochs=1",
        "seed=1",
        "callbacks.per_class_accuracy=null",
        "callbacks.error_analysis.pr_curves=false",
    )
    assert not any(tag.startswith(PER_CLASS_TAG) for tag in scalars(other)) and "test/acc" in scalars(other)
    assert pr_curves(other) == {}
    _, features, rows = read_projector(other)
    _, first_features, first_rows = read_projector(insight_run)
    assert [row[0] for row in rows] == [row[0] for row in first_rows]  # the same test images
    assert not np.allclose(features, first_features)  # of another model
    no_projector = train(
        tiny_data_dir, tmp_path / "no_projector", "epochs=1", "callbacks.error_analysis.projector_images=0"
    )
    assert not (no_projector / PROJECTOR_CONFIG).exists() and not list(no_projector.glob("0000*"))
    assert len(pr_curves(no_projector)) == 10 and (no_projector / "confusion_matrix.png").is_file()


@pytest.mark.slow
def test_float64_training_gets_the_whole_analysis(tiny_data_dir: Path, tmp_path: Path) -> None:
    run = train(tiny_data_dir, tmp_path / "float64", "epochs=1", "trainer.precision=64-true")
    _, features, rows = read_projector(run)
    assert features.shape == (SAMPLE, 84) and len(rows) == SAMPLE + 1
    assert len(pr_curves(run)) == 10 and f"{PER_CLASS_TAG}/{NAMES[0]}" in scalars(run)
    assert (run / "misclassified.png").is_file()


@pytest.mark.slow
def test_resumed_run_keeps_one_projector_and_one_value_per_epoch(tiny_data_dir: Path, tmp_path: Path) -> None:
    run = train(tiny_data_dir, tmp_path / "run", "epochs=1")
    assert (run / "00001" / PROJECTOR_TAG / "tensors.tsv").is_file()
    train(tiny_data_dir, run, "epochs=2", "ckpt_path=last")
    assert not (run / "00001").exists()  # the first session's projector is gone, folder and all
    config, features, rows = read_projector(run)
    assert [embedding.tensor_name for embedding in config.embeddings] == [f"{PROJECTOR_TAG}:00002"]
    assert features.shape == (SAMPLE, 84) and len(rows) == SAMPLE + 1
    accumulator = EventAccumulator(str(run), size_guidance={"scalars": 0})
    accumulator.Reload()
    assert [event.step for event in accumulator.Scalars(f"{PER_CLASS_TAG}/{NAMES[0]}")] == [1, 2]
    # Each session's curves at its own last epoch: the first model's stays as history, like its images.
    assert {tag: [event.step for event in events] for tag, events in pr_curves(run).items()} == {
        f"{PR_CURVE_TAG}/{name}": [1, 2] for name in NAMES
    }


@pytest.fixture(scope="module")
def tensorboard_server(insight_run: Path) -> Iterator[str]:
    """A real ``tensorboard`` serving the tiny run on a free port; its address. Always stopped afterwards."""
    tensorboard = Path(sys.executable).with_name("tensorboard")  # the command the environment installed
    command = [
        str(tensorboard),
        "--logdir",
        str(insight_run),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--load_fast=false",
    ]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        address = None
        for line in server.stdout:  # "TensorBoard 2.x at http://127.0.0.1:<port>/ (Press CTRL+C to quit)"
            found = re.search(r"at (http://127\.0\.0\.1:\d+)/", line)
            if found:
                address = found.group(1)
                break
        assert address, "tensorboard printed no address"
        deadline = time.monotonic() + 30
        while json.loads(fetch(address, "/data/runs")) != ["."]:  # it loads the event files in the background
            assert time.monotonic() < deadline, "tensorboard never listed the run"
            time.sleep(0.1)
        yield address
    finally:
        server.kill()
        server.wait()


# Straight to the local server: urlopen's shared opener keeps the proxy settings of the first request made in
# this process (a test of downloads sets an unreachable proxy), which would refuse the connection.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(address: str, path: str, **query: str) -> bytes:
    url = f"{address}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    with DIRECT.open(url, timeout=10) as response:
        return response.read()


@pytest.mark.slow
def test_tensorboard_server_shows_the_projector(tensorboard_server: str, insight_run: Path) -> None:
    deadline = time.monotonic() + 30
    while not json.loads(fetch(tensorboard_server, "/data/plugins_listing"))["projector"]["enabled"]:
        assert time.monotonic() < deadline, "the PROJECTOR tab never became active"  # it looks in the background
        time.sleep(0.1)
    assert json.loads(fetch(tensorboard_server, "/data/plugin/projector/runs")) == ["."]
    (embedding,) = json.loads(fetch(tensorboard_server, "/data/plugin/projector/info", run="."))["embeddings"]
    name = f"{PROJECTOR_TAG}:{EPOCHS:05d}"
    assert embedding["tensorName"] == name and embedding["tensorShape"] == [SAMPLE, 84]
    tensor = np.frombuffer(fetch(tensorboard_server, "/data/plugin/projector/tensor", run=".", name=name), "<f4")
    _, features, rows = read_projector(insight_run)
    np.testing.assert_array_equal(tensor.reshape(SAMPLE, 84), features.astype(np.float32))
    metadata = fetch(tensorboard_server, "/data/plugin/projector/metadata", run=".", name=name).decode()
    assert [line.split("\t") for line in metadata.splitlines()] == rows
    assert {row[1] for row in rows[1:]} == set(NAMES) and {row[2] for row in rows[1:]} <= set(NAMES)
    sprite = fetch(tensorboard_server, "/data/plugin/projector/sprite_image", run=".", name=name)
    assert Image.open(io.BytesIO(sprite)).size == (280, 280)


@pytest.mark.slow
def test_tensorboard_server_shows_pr_curves_and_per_class_scalars(
    tensorboard_server: str, insight_run: Path, tiny_data_dir: Path
) -> None:
    _, labels = tiny_test_set(tiny_data_dir)
    tabs = json.loads(fetch(tensorboard_server, "/data/plugins_listing"))
    assert tabs["pr_curves"]["enabled"] and tabs["scalars"]["enabled"]
    tags = json.loads(fetch(tensorboard_server, "/data/plugin/pr_curves/tags"))["."]
    assert sorted(tags) == sorted(f"{PR_CURVE_TAG}/{name}" for name in NAMES)
    logged = scalars(insight_run)
    for index, name in enumerate(NAMES):
        served = json.loads(
            fetch(tensorboard_server, "/data/plugin/pr_curves/pr_curves", run=".", tag=f"{PR_CURVE_TAG}/{name}")
        )
        (curve,) = served["."]
        assert curve["step"] == EPOCHS
        assert curve["true_positives"][0] == int((labels == index).sum()) and curve["recall"][0] == 1
        assert all(0 <= value <= 1 for value in curve["precision"] + curve["recall"])
        tag = f"{PER_CLASS_TAG}/{name}"
        points = json.loads(fetch(tensorboard_server, "/data/plugin/scalars/scalars", run=".", tag=tag))
        assert [(step, value) for _, step, value in points] == sorted(logged[tag].items())
