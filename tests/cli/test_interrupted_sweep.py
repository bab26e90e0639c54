"""A sweep stopped by SIGTERM in one of its jobs still writes its summary as the process exits (an atexit hook),
with rows for that job and for the damaged and killed runs an earlier sweep left in its folder."""

import signal
from pathlib import Path

import pytest

from tests.training.test_sweeps import make_job_folder, read_summary

pytestmark = pytest.mark.slow  # the sweep runs as a process of its own: its summary is written at process exit


def test_damaged_and_interrupted_runs_get_rows_and_never_stop_the_summary(run_cli, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    (make_job_folder(sweep_dir / "old-empty", "- lr=0.1\n") / "result.json").write_text("")  # a disk filled up
    (sweep_dir / "multirun.yaml").write_text("hydra:\n  job:\n    name: train\n")  # an earlier sweep's folder
    killed = make_job_folder(sweep_dir / "old-killed", "- lr=0.2\n")  # kill -9 after its first checkpoint
    (killed / "checkpoints").mkdir()
    (killed / "checkpoints" / "last.ckpt").write_bytes(b"")
    terminate_in_epoch_2 = (
        "+callbacks.fault._target_=tests.reliability_faults.SignalAt",
        "+callbacks.fault.epoch=2",
        "+callbacks.fault.batch=1",
        f"+callbacks.fault.signum={int(signal.SIGTERM)}",
        "+callbacks.fault.marker=fired",
    )
    done = run_cli(
        "-m", "epochs=1,2", "model.activation=relu", f"hydra.sweep.dir={sweep_dir}",
        "hydra.sweep.subdir=epochs${epochs}", *terminate_in_epoch_2,
    )  # fmt: skip
    assert done.returncode == 143, done.stderr[-3000:]
    assert "[sweep] 3 run(s) done" in done.stdout, "the damaged record did not stop the update after the first job"
    rows = {row["run"]: row for row in read_summary(sweep_dir)}
    assert {name: row["status"] for name, row in rows.items()} == {
        "epochs1": "completed",
        "epochs2": "interrupted",  # stopped by SIGTERM: the summary is written as the sweep exits
        "old-killed": "interrupted",
        "old-empty": "unreadable",
    }
    assert f"resume={killed}" in rows["old-killed"]["reason"]
    assert "result.json is empty" in rows["old-empty"]["reason"]
    assert float(rows["epochs2"]["wall_s"]) > 0, "an interrupted run's time comes from its event files"
