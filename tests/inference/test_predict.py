"""predict on pictures: real test images saved as files, as the data set has them and as users would have them."""

import csv
import io
import os
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lenet_lightning.data.datamodule import DATASETS
from lenet_lightning.data.pictures import STYLES, find_images, load_images, parse_invert, to_dataset_image
from lenet_lightning.errors import UserError
from lenet_lightning.inference.checkpoint import load_checkpoint
from lenet_lightning.inference.predict import predict
from lenet_lightning.training.run import fit
from tests.conftest import REAL_DATA_DIR, write_idx
from tests.inference.conftest import png_chunk

TRAIN_IMAGES = 3000  # a real-data subset: enough for a model with clear-cut predictions, in seconds
PICTURES = 24
CLEAR_MARGIN = 0.5  # top-1 minus top-2 probability above which a resampled copy should get the same class
# Resampling loses detail: on 1,000 test images 97.6% of resized copies kept their class, yet among ~17 clear
# predictions two flips happen (both with margins of 0.52 for one Fashion model); a conversion mistake flips most.
RESIZED_AGREEMENT = 0.75


def real_split(dataset: str, train: bool, count: int) -> tuple[np.ndarray, np.ndarray]:
    data = DATASETS[dataset](REAL_DATA_DIR, train=train, download=False)
    return data.data[:count].numpy(), data.targets[:count].numpy()


@pytest.fixture
def trained_on_real_subset(make_config, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[str, Path]:
    """A ReLU LeNet trained briefly on the first real training images (written as IDX files under tmp_path)."""
    dataset = request.param
    data_dir = tmp_path / "data"
    raw = data_dir / DATASETS[dataset].__name__ / "raw"
    for prefix, train, count in (("train", True, TRAIN_IMAGES), ("t10k", False, PICTURES)):
        images, labels = real_split(dataset, train, count)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    cfg = make_config(
        f"dataset={dataset}",
        "model.activation=relu",
        "model.pooling=max",
        "lr=0.1",
        "optimizer.momentum=0.9",
        "epochs=4",
        "dataset.batch_size=64",
        "accelerator=cpu",
        "callbacks.progress_bar.refresh_rate=0",
        "~callbacks.error_analysis",
        data_dir=data_dir,
    )
    fit(cfg)
    return dataset, Path(cfg.output_dir) / "checkpoints" / "last.ckpt"


@pytest.mark.real_data
@pytest.mark.parametrize("trained_on_real_subset", ["mnist", "fashion"], indirect=True)
def test_pictures_get_the_models_predictions_on_the_original_tensors(
    trained_on_real_subset: tuple[str, Path], run_command, tmp_path: Path
) -> None:
    dataset, checkpoint = trained_on_real_subset
    images, _ = real_split(dataset, train=False, count=PICTURES)
    folder = tmp_path / "pictures"
    folder.mkdir()
    for i, pixels in enumerate(images):
        Image.fromarray(pixels).save(folder / f"{i:02d}_original.png")
        Image.fromarray(255 - pixels).save(folder / f"{i:02d}_inverted.png")  # dark on white, like ink on paper
        rgb = Image.fromarray(pixels).convert("RGB").resize((100, 100), Image.Resampling.BICUBIC)
        rgb.save(folder / f"{i:02d}_resized.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")

    done = run_command(
        f"ckpt_path={checkpoint}", f"inputs={folder}", "output=preds.csv", module="lenet_lightning.predict"
    )
    assert done.returncode == 1, done.stderr[-3000:]  # a file was skipped; the others are still predicted
    assert f"skipped {folder / 'corrupt.png'}: " in done.stderr
    assert f"1 of {3 * PICTURES + 1} files skipped" in done.stderr
    with (tmp_path / "preds.csv").open() as file:
        rows = {Path(row["file"]).stem: row for row in csv.DictReader(file)}
    assert len(rows) == 3 * PICTURES

    loaded = load_checkpoint(str(checkpoint))
    with torch.inference_mode():
        probabilities = loaded.module(torch.from_numpy(images).unsqueeze(1).float() / 255).softmax(dim=1)
    top2 = probabilities.topk(2, dim=1)
    margins = (top2.values[:, 0] - top2.values[:, 1]).tolist()
    expected = [loaded.class_names[i] for i in top2.indices[:, 0]]
    # A saved data set image comes back unchanged unless its content does not fill its box after thresholding
    # (a few Fashion products): then it is fitted again, as a user's picture would be, and may change class.
    loaded_back = load_images([folder / f"{i:02d}_original.png" for i in range(PICTURES)], STYLES[dataset]).images
    originals = torch.from_numpy(images).unsqueeze(1).float() / 255
    unchanged = [i for i in range(PICTURES) if (loaded_back[i] - originals[i]).abs().max() <= 1.5 / 255]
    assert len(unchanged) >= 0.9 * PICTURES, unchanged
    for i in unchanged:
        assert rows[f"{i:02d}_original"]["prediction"] == expected[i], i
    for i in range(PICTURES):
        assert rows[f"{i:02d}_inverted"]["prediction"] == rows[f"{i:02d}_original"]["prediction"], i
        assert rows[f"{i:02d}_inverted"]["probability"] == rows[f"{i:02d}_original"]["probability"], i
    # Shrinking a 100 x 100 copy back to 28 x 28 cannot restore every pixel, so an image near a class boundary
    # may flip; a conversion mistake (scale, centring, colour, inversion) would flip most of them.
    clear = [i for i, margin in enumerate(margins) if margin > CLEAR_MARGIN]
    assert len(clear) >= PICTURES // 2, margins
    resized = {i: rows[f"{i:02d}_resized"]["prediction"] for i in clear}
    agreeing = [i for i in clear if resized[i] == expected[i]]
    assert len(agreeing) >= RESIZED_AGREEMENT * len(clear), {i: (resized[i], expected[i]) for i in clear}


def test_dark_on_light_pictures_are_inverted_automatically_and_on_request() -> None:
    ink_on_paper = np.full((60, 40), 230, dtype=np.uint8)
    ink_on_paper[10:50, 18:22] = 20  # a "1" drawn with a pen on grey-white paper
    automatic = to_dataset_image(Image.fromarray(ink_on_paper), STYLES["mnist"])
    assert automatic[0].max() == 0 and automatic.max() == 255  # black background, white stroke
    assert (to_dataset_image(Image.fromarray(ink_on_paper), STYLES["mnist"], invert=True) == automatic).all()
    not_inverted = to_dataset_image(Image.fromarray(ink_on_paper), STYLES["mnist"], invert=False)
    assert not (not_inverted == automatic).all()


def test_small_digit_in_a_large_rgba_picture_is_scaled_and_centred_like_mnist() -> None:
    picture = Image.new("RGBA", (400, 300), (0, 0, 0, 0))  # transparent, i.e. white paper
    picture.paste((0, 0, 0, 255), (30, 40, 60, 120))  # a dark block in the top-left corner
    image = to_dataset_image(picture, STYLES["mnist"]).astype(float)
    # The 80 x 30 block becomes 20 x 7.5 pixels: its longest side fills MNIST's 20-pixel box.
    assert image.sum() / 255 == pytest.approx(20 * 7.5, rel=0.03)
    assert np.count_nonzero(image.max(axis=1) > 127) in (20, 21)  # 21 when its edges fall between pixels
    ys, xs = np.indices(image.shape)
    assert (ys * image).sum() / image.sum() == pytest.approx(14, abs=0.6)  # centre of mass in the middle
    assert (xs * image).sum() / image.sum() == pytest.approx(14, abs=0.6)


def test_unreadable_files_are_reported_and_the_rest_converted(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(tmp_path / "blank.bmp")
    (tmp_path / "notes.jpg").write_text("not a picture")
    loaded = load_images(find_images(str(tmp_path)), STYLES["fashion"])
    assert loaded.paths == [tmp_path / "blank.bmp"]
    assert loaded.images.shape == (1, 1, 28, 28)
    assert [path.name for path, _ in loaded.failures] == ["notes.jpg"]


def damaged_pngs(folder: Path) -> dict[str, str]:
    """PNG files damaged as disks and transfers damage them, each with the reason it is skipped for."""
    buffer = io.BytesIO()
    Image.fromarray(np.tri(28, dtype=np.uint8) * 255).save(buffer, "PNG")
    good = buffer.getvalue()
    (folder / "good.png").write_bytes(good)
    header, data = good[8:33], good[41:-24]  # the signature and IHDR chunk; the IDAT chunk's data
    # Image data split over two IDAT chunks, the second with a broken chunk type: Pillow raises SyntaxError on load.
    broken = good[:8] + header + png_chunk(b"IDAT", data[:10]) + png_chunk(b"ID\0T", data[10:]) + good[-12:]
    (folder / "broken_chunk.png").write_bytes(broken)
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "notes.png").write_text("not a picture")
    return {
        "broken_chunk.png": "broken PNG file (chunk b'ID\\x00T')",
        "truncated.png": "image file is truncated",
        "notes.png": "cannot identify image file: not a format Pillow reads",
    }


@contextmanager
def fails_if_blocked(seconds: int = 20) -> Iterator[None]:
    """Turn a read that blocks (a pipe with no writer) into a test failure instead of a hung test run."""

    def blocked(signum: int, frame: object) -> None:
        raise TimeoutError(f"blocked for {seconds} s: a special file was read")

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def special_files(folder: Path) -> Iterator[dict[Path, str]]:
    """A named pipe and a socket with picture names in ``folder``, and /dev/zero: each with its refusal."""
    os.mkfifo(folder / "pipe.png")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(folder / "socket.png"))
        yield {
            folder / "pipe.png": "is a named pipe, not a picture file",
            folder / "socket.png": "is a socket, not a picture file",
            Path("/dev/zero"): "is a character device, not a picture file",
        }


def test_each_damaged_picture_is_skipped_with_its_reason_and_the_good_one_converted(tmp_path: Path) -> None:
    reasons = damaged_pngs(tmp_path)
    loaded = load_images(find_images(str(tmp_path)), STYLES["mnist"])
    assert loaded.paths == [tmp_path / "good.png"] and loaded.images.shape == (1, 1, 28, 28)
    assert {path.name: reason for path, reason in loaded.failures} == reasons


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes and sockets as files are POSIX")
def test_special_files_are_refused_by_what_they_are_and_never_read(tmp_path: Path) -> None:
    with special_files(tmp_path) as refusals, fails_if_blocked():
        assert find_images("/dev/zero") == [Path("/dev/zero")], "named as it is, not as a missing file"
        assert find_images(str(tmp_path)) == [tmp_path / "pipe.png", tmp_path / "socket.png"], "listed, not dropped"
        loaded = load_images([*find_images(str(tmp_path)), Path("/dev/zero")], STYLES["mnist"])
    assert loaded.paths == [] and dict(loaded.failures) == refusals


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes and sockets as files are POSIX")
def test_predict_classifies_the_good_pictures_among_damaged_and_special_files(
    tiny_trained_run: Path, tmp_path: Path
) -> None:
    reasons = damaged_pngs(tmp_path)
    with special_files(tmp_path) as refusals, fails_if_blocked():
        predictions, failures = predict(str(tiny_trained_run), [str(tmp_path), "/dev/zero"], accelerator="cpu")
    assert [prediction.file for prediction in predictions] == [tmp_path / "good.png"]
    assert dict(failures) == refusals | {tmp_path / name: reason for name, reason in reasons.items()}


def test_bad_inputs_and_invert_values_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file or folder"):
        find_images(str(tmp_path / "missing.png"))
    with pytest.raises(UserError, match=r"no \.png, \.jpg, \.jpeg, \.bmp files in folder"):
        find_images(str(tmp_path))
    with pytest.raises(UserError, match="invert=maybe is not one of auto, true, false"):
        parse_invert("maybe")
    assert (parse_invert("auto"), parse_invert(True), parse_invert(False)) == (None, True, False)
