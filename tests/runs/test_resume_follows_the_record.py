"""A resume does what its run's record says, and a refused one leaves that record as it was.

The training command runs in-process (``cli()`` with ``sys.argv`` set, as a shell would call it): every refusal
here comes from the pre-run checks, before Hydra writes anything, so the run folder's files keep their md5 sums.
Cases whose rule the edit loop checks elsewhere (batch norm on one example, another data set, a complete run:
tests/runs/; the captured CUDA step on a CPU: tests/speed/) are slow here.
"""

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import made_once, train_in_process

TINY_RUN = ("epochs=1", "accelerator=cpu", "callbacks.error_analysis=null", "callbacks.progress_bar.refresh_rate=0")


def md5_sums(folder: Path) -> dict[str, str]:
    """Every file of a run's record, by its path in the folder."""
    return {
        str(path.relative_to(folder)): hashlib.md5(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != "train.log"
    }


@pytest.fixture(scope="session")
def scheduled_run(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A completed one-epoch run with lr=0.3 and a one-cycle schedule, as the command line leaves it."""

    def train(folder: Path) -> None:
        arguments = (f"data_dir={tiny_data_dir}", *TINY_RUN, "lr=0.3", "scheduler=onecycle", f"hydra.run.dir={folder}")
        with pytest.MonkeyPatch.context() as monkeypatch:
            assert train_in_process(monkeypatch, folder.parent, *arguments) == 0

    return made_once(tmp_path_factory, "scheduled_run", train)


@pytest.fixture
def run(scheduled_run: Path, tmp_path: Path) -> Path:
    """A copy of the completed run that a test may resume."""
    return Path(shutil.copytree(scheduled_run, tmp_path / "run"))


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (("epochs=3", "lr=0.01"), "optimizer.lr=0.3"),  # the optimizer state goes on with the checkpoint's lr
        (("epochs=3",), "schedule was built for epochs=1"),  # one-cycle cannot be stretched
        pytest.param(("epochs=3", "model=lenet_bn", "dataset.batch_size=1"), "batch norm", marks=pytest.mark.slow),
        pytest.param(("epochs=3", "cuda_graph=true"), "cuda_graph=true", marks=pytest.mark.slow),
        (("epochs=3", "dataset.val_size=512"), "leaves no training examples"),
        pytest.param(("epochs=3", "dataset=fashion"), "dataset=mnist", marks=pytest.mark.slow),
    ],
    ids=["another-lr", "stretched-schedule", "batch-norm-on-one", "cuda-graph-on-cpu", "no-training-batch", "data"],
)
def test_a_refused_resume_leaves_every_file_of_the_run_as_it_was(
    run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, overrides: tuple[str, ...], says: str
) -> None:
    before = md5_sums(run)
    assert train_in_process(monkeypatch, run.parent, f"resume={run}", *overrides) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and says in error[0], error
    assert md5_sums(run) == before  # result.json still "completed", overrides and checkpoint unchanged


@pytest.mark.parametrize(
    ("content", "says"), [("", "is damaged (empty)"), ("lr: [", "is damaged"), ("- lr=(", "cannot parse")]
)
def test_damaged_saved_overrides_are_named_instead_of_training_on_with_defaults(
    run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, content: str, says: str
) -> None:
    (run / ".hydra" / "overrides.yaml").write_text(content)
    before = md5_sums(run)
    assert train_in_process(monkeypatch, run.parent, f"resume={run}", "epochs=3") == 2
    error = capsys.readouterr().err.strip()
    assert says in error and "overrides" in error and "\n" not in error, error
    assert md5_sums(run) == before


@pytest.mark.slow
def test_a_resume_of_a_complete_run_changes_nothing(run: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    before = md5_sums(run)
    assert train_in_process(monkeypatch, run.parent, f"resume={run}") == 0
    assert "already complete (epoch 1 of 1)" in capsys.readouterr().out
    assert md5_sums(run) == before


@pytest.mark.slow
def test_continuing_with_ckpt_path_last_keeps_the_runs_saved_overrides(
    tiny_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "run"
    first = (f"data_dir={tiny_data_dir}", *TINY_RUN, "lr=0.3", f"hydra.run.dir={folder}")
    assert train_in_process(monkeypatch, tmp_path, *first) == 0
    assert train_in_process(monkeypatch, tmp_path, "ckpt_path=last", f"hydra.run.dir={folder}", "epochs=2") == 0
    saved = (folder / ".hydra" / "overrides.yaml").read_text()
    assert "lr=0.3" in saved and "epochs=2" in saved
    checkpoint = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["optimizer"]["lr"] == 0.3 and checkpoint["epoch"] == 1


def test_a_checkpoint_of_a_network_this_code_cannot_build_is_one_line(
    run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    path = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["hyper_parameters"]["net"]["activation"] = "swish"  # made by other code
    torch.save(checkpoint, path)
    assert train_in_process(monkeypatch, run.parent, f"resume={run}", "epochs=3") == 2
    error = capsys.readouterr().err.strip()
    assert "cannot rebuild ('swish')" in error and "\n" not in error, error


def test_a_checkpoint_with_a_flipped_bit_fails_its_crc_check(
    run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    path = run / "checkpoints" / "last.ckpt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the stored weights: still a zip, still finite numbers
    path.write_bytes(bytes(data))
    assert train_in_process(monkeypatch, run.parent, f"resume={run}", "epochs=3") == 2
    error = capsys.readouterr().err.strip()
    assert "fails its CRC check" in error and "\n" not in error, error
