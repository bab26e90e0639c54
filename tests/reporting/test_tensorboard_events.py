"""A resumed run's event file is replayed after the killed session's, whatever second and process made them."""

import time
from pathlib import Path

from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lenet_lightning.reporting.tensorboard_events import restart_at, wait_to_be_read_last


def log_epochs(folder: Path, epochs: range, restart: bool = False) -> Path:
    """One session's event file with a value per epoch, as training writes it; returns the file."""
    before = set(folder.glob("events.out.tfevents.*"))
    logger = TensorBoardLogger(save_dir=folder, name="", version="")
    if restart:
        restart_at(logger, epochs.start)
    for epoch in epochs:
        logger.log_metrics({"test/acc": epoch / 10}, step=epoch)
    logger.finalize("success")
    (made,) = set(folder.glob("events.out.tfevents.*")) - before
    return made


def test_a_session_resumed_within_the_same_second_is_replayed_last(tmp_path: Path) -> None:
    killed = log_epochs(tmp_path, range(1, 4))  # epoch 3 logged past the checkpoint of epoch 2
    second, host_pid_uid = killed.name.split(".", 4)[3:]
    host = host_pid_uid.rsplit(".", 2)[0]
    # Made on this host by a process whose id sorts after any other in this very second: the worst case.
    killed = killed.rename(killed.with_name(f"events.out.tfevents.{second}.{host}.99999999.0"))
    wait_to_be_read_last(tmp_path)
    assert int(time.time()) > int(second)
    log_epochs(tmp_path, range(3, 5), restart=True)

    accumulator = EventAccumulator(str(tmp_path))
    accumulator.Reload()
    assert [event.step for event in accumulator.Scalars("test/acc")] == [1, 2, 3, 4]


def test_a_folder_without_event_files_is_not_waited_for(tmp_path: Path) -> None:
    started = time.monotonic()
    wait_to_be_read_last(tmp_path)
    assert time.monotonic() - started < 0.1
