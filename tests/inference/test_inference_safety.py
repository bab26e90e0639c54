"""eval, predict and export never destroy their input and fail in one line (issue "Never lose a run").

Each class of failure goes through the real command line on real files; every file that must survive is
compared byte for byte before and after. The helpers behind them get fast tests of their own.
"""

import os
import shutil
import socket
import struct
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from lenet_lightning.data.pictures import MAX_PIXELS, STYLES, load_images, pixel_limit
from lenet_lightning.errors import UserError
from lenet_lightning.inference.checkpoint import load_checkpoint
from lenet_lightning.inference.export import ExportCheckError, export, largest_difference, within_tolerance
from lenet_lightning.inference.outputs import check_output_file, check_output_folder, same_file
from lenet_lightning.runs.atomic import replaced_on_success
from tests.inference.conftest import digit_png, png_chunk

RunCommand = Callable[..., subprocess.CompletedProcess]
SIDE = 4096  # MAX_PIXELS is SIDE x SIDE


def blank_png(path: Path, width: int, height: int) -> Path:
    """A valid black grayscale PNG of any size, compressed row by row: a huge one costs little memory or disk."""
    compressor = zlib.compressobj(9)
    row = bytes(1 + width)  # filter type 0, then black pixels
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    chunks = png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (links as their targets' bytes), to show that nothing was written or changed."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def one_line_error(done: subprocess.CompletedProcess) -> str:
    """The single ``error: ...`` line a refused command prints on stderr with exit status 2."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def trained_run(tiny_trained_run: Path) -> Path:
    return tiny_trained_run


@pytest.fixture
def run(trained_run: Path, tiny_data_dir: Path, tmp_path: Path) -> Path:
    """This test's own copy of the run folder and of its data (``tmp_path/data``), to damage or protect."""
    folder = tmp_path / "run"
    shutil.copytree(trained_run, folder)
    shutil.copytree(tiny_data_dir / "MNIST", tmp_path / "data" / "MNIST")
    config = OmegaConf.load(folder / ".hydra" / "config.yaml")
    config.data_dir = str(tmp_path / "data")
    OmegaConf.save(config, folder / ".hydra" / "config.yaml")
    return folder


# --- 1. An output never replaces an input ---------------------------------------------------------------------


def input_named_by(how: str, run: Path, tmp_path: Path) -> tuple[str, list[str]]:
    """(output=..., other arguments) where the output is a file the command reads, reached in the way ``how``."""
    checkpoint = run / "checkpoints" / "last.ckpt"
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    picture = digit_png(pictures / "seven.png")
    if how == "symlink to the checkpoint":
        (tmp_path / "model.onnx").symlink_to(checkpoint)
        return str(tmp_path / "model.onnx"), ["format=onnx"]
    if how == "hard link to the checkpoint":
        os.link(checkpoint, tmp_path / "model.onnx")
        return str(tmp_path / "model.onnx"), ["format=onnx"]
    if how == "picture found in an input folder, through a symlink":
        (tmp_path / "preds.csv").symlink_to(picture)
        return str(tmp_path / "preds.csv"), [f"inputs={pictures}"]
    named = {
        "checkpoint": (checkpoint, ["format=onnx"]),
        "run config": (run / ".hydra" / "config.yaml", ["format=onnx"]),
        "data file": (tmp_path / "data" / "MNIST" / "raw" / "t10k-images-idx3-ubyte", ["format=onnx"]),
        "picture": (picture, [f"inputs={picture}"]),
        "checkpoint, from predict": (checkpoint, [f"inputs={picture}"]),
    }
    path, arguments = named[how]
    return str(path), arguments


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "how"),
    [
        ("export", "checkpoint"),
        ("export", "symlink to the checkpoint"),
        ("export", "hard link to the checkpoint"),
        ("export", "run config"),
        ("export", "data file"),
        ("predict", "picture"),
        ("predict", "picture found in an input folder, through a symlink"),
        ("predict", "checkpoint, from predict"),
    ],
)
def test_an_output_that_is_an_input_is_refused_and_nothing_is_written(
    module: str, how: str, run: Path, run_command: RunCommand, tmp_path: Path
) -> None:
    output, arguments = input_named_by(how, run, tmp_path)
    before = snapshot(tmp_path)
    done = run_command(f"ckpt_path={run}", *arguments, f"output={output}", module=f"lenet_lightning.{module}")
    assert "which this command reads; pass another output=" in one_line_error(done)
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_exporting_a_checkpoint_named_like_its_export_refuses_the_default_output(
    run: Path, run_command: RunCommand, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "model.onnx"  # a checkpoint, whatever its name says
    shutil.copy(run / "checkpoints" / "last.ckpt", checkpoint)
    before = snapshot(tmp_path)
    done = run_command(f"ckpt_path={checkpoint}", "format=onnx", module="lenet_lightning.export")
    assert f"the default output {checkpoint} would overwrite the checkpoint" in one_line_error(done)
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_the_default_export_replaces_only_an_earlier_export(run: Path, run_command: RunCommand, tmp_path: Path) -> None:
    default = run / "checkpoints" / "last.onnx"
    default.write_text("my own notes, not a model\n")
    before = snapshot(tmp_path)
    done = run_command(f"ckpt_path={run}", "format=onnx", module="lenet_lightning.export")
    assert f"the default output {default} already exists and was not written by this command" in one_line_error(done)
    assert snapshot(tmp_path) == before

    default.unlink()
    for _ in range(2):  # the second export replaces the first one's file
        done = run_command(f"ckpt_path={run}", "format=onnx", module="lenet_lightning.export")
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"exported onnx model: {default}" in done.stdout


# --- 10. Non-finite weights are refused; NaN is never within tolerance ------------------------------------------


def spoil_weight(checkpoint: Path, value: float) -> None:
    """One weight of the checkpoint set to ``value``, as bit rot would leave it."""
    content = torch.load(checkpoint, weights_only=True)
    name = next(name for name, tensor in content["state_dict"].items() if tensor.is_floating_point())
    content["state_dict"][name].view(-1)[5] = value
    torch.save(content, checkpoint)


def arguments_of(module: str, tmp_path: Path) -> list[str]:
    """What each command needs besides ckpt_path: predict a picture to classify."""
    return [f"inputs={digit_png(tmp_path / 'seven.png')}"] if module == "predict" else []


@pytest.mark.slow
@pytest.mark.parametrize(("module", "value"), [("eval", float("nan")), ("export", float("inf")), ("predict", -np.inf)])
def test_a_checkpoint_with_non_finite_weights_is_refused(
    module: str, value: float, run: Path, run_command: RunCommand, tmp_path: Path
) -> None:
    checkpoint = run / "checkpoints" / "last.ckpt"
    spoil_weight(checkpoint, value)
    arguments = arguments_of(module, tmp_path)
    before = snapshot(tmp_path)
    done = run_command(f"ckpt_path={checkpoint}", *arguments, module=f"lenet_lightning.{module}")
    assert f"checkpoint {checkpoint} has NaN or infinite weights" in one_line_error(done)
    assert snapshot(tmp_path) == before


def test_nan_and_infinity_are_never_within_tolerance() -> None:
    assert within_tolerance(0.0, 1e-4) and within_tolerance(1e-4, 1e-4)
    assert not within_tolerance(2e-4, 1e-4)
    assert not within_tolerance(float("nan"), 1e-4)
    assert not within_tolerance(float("inf"), 1e-4)


def test_largest_difference_keeps_a_nan_that_pythons_max_would_drop() -> None:
    zeros = torch.zeros(3)
    close = (zeros + 1e-6, zeros)
    broken = (torch.tensor([0.0, float("nan"), 0.0]), zeros)
    assert largest_difference([close]) == pytest.approx(1e-6)
    assert np.isnan(largest_difference([close, broken]))  # max(1e-6, nan) is 1e-6 in Python
    assert np.isnan(largest_difference([broken, close]))


# --- 16. An export that fails its check is never left under its name --------------------------------------------


@pytest.mark.slow
def test_an_export_that_fails_its_check_leaves_the_target_as_it_was(
    run: Path, run_command: RunCommand, tmp_path: Path
) -> None:
    target = tmp_path / "exports" / "model.onnx"
    target.parent.mkdir()
    target.write_bytes(b"the previous model")
    # ONNX Runtime's logits differ from PyTorch's by about 1e-7: more than this tolerance.
    done = run_command(
        f"ckpt_path={run}",
        "format=onnx",
        f"output={target}",
        "overwrite=true",  # the previous model is not an export of this tool
        "tolerance=1e-12",
        module="lenet_lightning.export",
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "export check failed: the exported onnx model's logits differ" in done.stderr
    assert target.read_bytes() == b"the previous model"
    assert sorted(path.name for path in target.parent.iterdir()) == ["model.onnx"]  # no temporary file left


@pytest.mark.slow
def test_a_nan_check_fails_and_removes_the_file(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "lenet_lightning.inference.export.run_torchscript", lambda path, images: torch.full((len(images), 10), np.nan)
    )
    with pytest.raises(ExportCheckError, match="differ from PyTorch's by nan"):
        export(str(run), "torchscript", str(tmp_path / "out" / "model.pt"))
    assert list((tmp_path / "out").iterdir()) == []


# --- 12. Oversized pictures are skipped from their header; the others are still predicted ----------------------


@pytest.mark.slow
def test_oversized_pictures_are_skipped_and_the_rest_predicted(
    run: Path, run_command: RunCommand, tmp_path: Path
) -> None:
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    good = digit_png(pictures / "a_good.png")
    huge = blank_png(pictures / "b_huge.png", 20_000, 20_000)  # 400 megapixels: Pillow's own limit raises
    just_over = blank_png(pictures / "c_just_over.png", SIDE + 1, SIDE)  # under Pillow's limit, over ours
    done = run_command(f"ckpt_path={run}", f"inputs={pictures}", "output=preds.csv", module="lenet_lightning.predict")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    for path in (huge, just_over):
        assert f"skipped {path}: larger than {MAX_PIXELS:,} pixels" in done.stderr
    assert "2 of 3 files skipped" in done.stderr
    assert str(good) in done.stdout and str(huge) not in done.stdout
    rows = (tmp_path / "preds.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith(f"{good},")


def test_the_pixel_limit_is_read_from_the_header_and_put_back(tmp_path: Path) -> None:
    pillows_limit = Image.MAX_IMAGE_PIXELS
    at_limit = blank_png(tmp_path / "at_limit.png", SIDE, SIDE)
    over = blank_png(tmp_path / "over.png", SIDE + 1, SIDE)
    far_over = blank_png(tmp_path / "far_over.png", SIDE, 3 * SIDE)  # over twice the limit: Pillow raises an error
    with pixel_limit(MAX_PIXELS):
        Image.open(at_limit).close()
        with pytest.raises(Image.DecompressionBombWarning):
            Image.open(over)
        with pytest.raises(Image.DecompressionBombError):
            Image.open(far_over)
    assert pillows_limit == Image.MAX_IMAGE_PIXELS
    loaded = load_images([at_limit, over], STYLES["mnist"])
    assert loaded.paths == [at_limit]
    assert [path for path, _ in loaded.failures] == [over]


# --- 13. Outputs that cannot be written, damaged run configs: one line, before any work -------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "where", "message"),
    [
        ("eval", "a file", "is a file, but this command writes a folder of results"),
        ("predict", "a folder", "is a folder; name a file"),
        ("export", "a folder", "is a folder; name a file"),
        ("eval", "below a file", "is a file, not a folder"),
        ("predict", "below a file", "is a file, not a folder"),
        ("export", "below a file", "is a file, not a folder"),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_any_work(
    module: str, where: str, message: str, run: Path, run_command: RunCommand, tmp_path: Path
) -> None:
    (tmp_path / "a folder").mkdir()
    (tmp_path / "a file").write_text("notes\n")
    output = {"a file": "a file", "a folder": "a folder", "below a file": "a file/results/out"}[where]
    arguments = arguments_of(module, tmp_path)
    before = snapshot(tmp_path)
    done = run_command(f"ckpt_path={run}", *arguments, f"output={output}", module=f"lenet_lightning.{module}")
    assert message in one_line_error(done)
    assert snapshot(tmp_path) == before


@pytest.mark.slow
@pytest.mark.parametrize("module", ["eval", "export"])
def test_a_read_only_run_folder_is_refused_before_any_work(
    module: str, run: Path, run_command: RunCommand, tmp_path: Path
) -> None:
    folders = [run, run / "checkpoints"]
    for folder in folders:
        folder.chmod(0o555)
    try:
        if os.access(run, os.W_OK):
            pytest.skip("this user writes into read-only folders (root with CAP_DAC_OVERRIDE)")
        before = snapshot(tmp_path)
        done = run_command(f"ckpt_path={run}", module=f"lenet_lightning.{module}")
        line = one_line_error(done)
        assert "cannot write the default output" in line and "is not writable (Permission denied)" in line
        assert snapshot(tmp_path) == before
    finally:
        for folder in folders:
            folder.chmod(0o755)


def damage(config: Path, how: str) -> None:
    text = config.read_bytes()
    damaged = {
        "truncated": text[: text.index(b"data_dir: ${data_dir}") + len(b"data_dir: ${da")],
        "garbage": bytes(range(128, 256)),
        "empty": b"",
        "a list": b"- dataset\n- mnist\n",
        "no dataset section": text.replace(b"\ndataset:", b"\ndataset_old:"),
        "a dataset key lost": text.replace(b"  eval_batch_size:", b"  # eval_batch_size:"),
        "an unknown data set": text.replace(b"  name: mnist", b"  name: cifar"),
    }
    config.write_bytes(damaged[how])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "how"), [("eval", "truncated"), ("predict", "garbage"), ("export", "a dataset key lost")]
)
def test_a_damaged_run_config_is_named_with_the_fix(
    module: str, how: str, run: Path, run_command: RunCommand, tmp_path: Path
) -> None:
    config = run / ".hydra" / "config.yaml"
    damage(config, how)
    arguments = arguments_of(module, tmp_path)
    before = snapshot(tmp_path)
    done = run_command(f"ckpt_path={run}", *arguments, module=f"lenet_lightning.{module}")
    line = one_line_error(done)
    assert f"run config {config} is damaged (" in line
    assert "restore it from a copy, or copy" in line and "out of its run folder to use it without one" in line
    assert snapshot(tmp_path) == before


@pytest.mark.slow
@pytest.mark.parametrize(
    "how",
    ["truncated", "garbage", "empty", "a list", "no dataset section", "a dataset key lost", "an unknown data set"],
)
def test_every_kind_of_damaged_run_config_is_refused(how: str, run: Path) -> None:
    damage(run / ".hydra" / "config.yaml", how)
    with pytest.raises(UserError, match=r"run config .*config\.yaml is damaged \(.+\); restore it"):
        load_checkpoint(str(run)).datamodule()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "argument", "message"),
    [
        ("eval", "outptu=x", "unknown config key 'outptu'; did you mean 'output'?"),
        ("eval", "accelerator=gpu", "accelerator=gpu but no GPU is visible on this machine"),
        ("predict", "batch_size=0", "batch_size=0 is not allowed: batch_size must be an integer >= 1"),
        ("predict", "batch_size=abc", "batch_size=abc is not allowed: batch_size must be an integer >= 1"),
        ("predict", "accelerator=gpu", "accelerator=gpu but no GPU is visible on this machine"),
        ("export", "tolerance=abc", "tolerance=abc is not allowed: tolerance must be a finite number > 0"),
        ("export", "tolerance=nan", "tolerance=nan is not allowed: tolerance must be a finite number > 0"),
        ("export", "fromat=onnx", "unknown config key 'fromat'; did you mean 'format'?"),
    ],
)
def test_bad_values_are_refused_by_the_schema_in_one_line(
    module: str, argument: str, message: str, run_command: RunCommand, tmp_path: Path
) -> None:
    if argument == "accelerator=gpu" and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    done = run_command("ckpt_path=x.ckpt", argument, module=f"lenet_lightning.{module}")
    assert message in one_line_error(done)
    assert list(tmp_path.iterdir()) == []


# --- The helpers: inputs and outputs compared as files, writes that are all or nothing --------------------------


def test_same_file_sees_through_symbolic_links_hard_links_and_dots(tmp_path: Path) -> None:
    original = tmp_path / "a.ckpt"
    original.write_text("weights")
    (tmp_path / "link").symlink_to(original)
    os.link(original, tmp_path / "hard")
    (tmp_path / "sub").mkdir()
    other = tmp_path / "b.ckpt"
    other.write_text("weights")
    for alias in (tmp_path / "link", tmp_path / "hard", tmp_path / "sub" / ".." / "a.ckpt"):
        assert same_file(alias, original), alias
    assert not same_file(other, original)  # same bytes, another file
    assert not same_file(tmp_path / "missing", original)


def test_output_file_rules(tmp_path: Path) -> None:
    checkpoint = tmp_path / "last.ckpt"
    checkpoint.write_text("weights")
    reads = [("the checkpoint", checkpoint)]
    theirs = tmp_path / "last.onnx"
    theirs.write_text("someone's file")
    with pytest.raises(UserError, match="would overwrite the checkpoint"):
        check_output_file(checkpoint, reads, named=True)
    with pytest.raises(UserError, match="already exists and was not written by this command; pass overwrite=true"):
        check_output_file(theirs, reads, named=False, is_own_output=lambda path: False)
    check_output_file(theirs, reads, named=False, is_own_output=lambda path: True)  # an earlier output: replaced
    with pytest.raises(UserError, match="already exists and was not written by this command; pass overwrite=true"):
        check_output_file(theirs, reads, named=True)  # naming it is not enough
    check_output_file(theirs, reads, named=True, overwrite=True)  # the user asked for exactly that
    check_output_file(tmp_path / "new" / "deeper" / "model.onnx", reads, named=False)
    assert not (tmp_path / "new").exists()  # checking creates nothing
    with pytest.raises(UserError, match="is a folder; name a file"):
        check_output_file(tmp_path, reads, named=True)
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(UserError, match=r"is a named pipe \(FIFO\), not a regular file"):
        check_output_file(tmp_path / "pipe", reads, named=True)  # a rename would replace the pipe itself
    with pytest.raises(UserError, match=r"^output=/dev/null is a character device, not a regular file; name a file"):
        check_output_file(Path("/dev/null"), reads, named=True, overwrite=True)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "sock"))
    server.close()
    with pytest.raises(UserError, match=r"is a socket, not a regular file"):
        check_output_file(tmp_path / "sock", reads, named=True, overwrite=True)
    (tmp_path / "link.onnx").symlink_to(theirs)
    (tmp_path / "dangling.onnx").symlink_to(tmp_path / "missing" / "model.onnx")
    for link, target in (
        (tmp_path / "link.onnx", theirs),
        (tmp_path / "dangling.onnx", tmp_path / "missing" / "model.onnx"),
    ):
        with pytest.raises(UserError) as raised:
            check_output_file(link, reads, named=True, overwrite=True)  # a rename would replace the link itself
        assert str(raised.value) == f"output={link} is a symbolic link to {target}; name the file itself"
    with pytest.raises(UserError, match=r"last\.onnx is a file, not a folder"):
        check_output_file(theirs / "model.onnx", reads, named=True)


def test_output_folder_rules(tmp_path: Path) -> None:
    checkpoint = tmp_path / "eval.json"  # a checkpoint with a name eval writes in its output folder
    checkpoint.write_text("weights")
    with pytest.raises(UserError, match=r"\(its eval\.json\) would overwrite the checkpoint"):
        check_output_folder(tmp_path, ["eval.json", "confusion_matrix.png"], [("the checkpoint", checkpoint)], True)
    with pytest.raises(UserError, match="is a file, but this command writes a folder"):
        check_output_folder(checkpoint, ["eval.json"], [], named=True)
    check_output_folder(tmp_path / "eval" / "last", ["eval.json"], [("the checkpoint", checkpoint)], named=False)
    (tmp_path / "results").symlink_to(tmp_path / "eval")
    with pytest.raises(UserError, match=r"results is a symbolic link to .*eval; name the folder itself$"):
        check_output_folder(tmp_path / "results", ["eval.json"], [], named=True, overwrite=True)
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "hparams.yaml").symlink_to(checkpoint)  # one of the files it writes, now a link elsewhere
    with pytest.raises(UserError, match=r"its hparams\.yaml is a symbolic link to .*eval\.json; pass another output="):
        check_output_folder(earlier, ["hparams.yaml"], [], named=False, is_own_output=lambda folder: True)
    projector = earlier / "00003" / "test_features" / "tensors.tsv"
    projector.parent.mkdir(parents=True)
    projector.touch()
    with pytest.raises(UserError, match="which this command would delete without writing it again"):
        check_output_folder(earlier, [], [], named=True, overwrite=True, removes=["00003/test_features/tensors.tsv"])


def test_a_failed_write_leaves_the_target_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "preds.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), replaced_on_success(target) as staged:
        staged.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old\n"
    assert [path.name for path in tmp_path.iterdir()] == ["preds.csv"]
    mask = os.umask(0o027)
    try:
        with replaced_on_success(target) as staged:
            staged.write_text("new\n")
    finally:
        os.umask(mask)
    assert target.read_text() == "new\n"
    assert target.stat().st_mode & 0o777 == 0o640  # what open() would give, not mkstemp's 0o600
