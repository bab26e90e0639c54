"""One line, not a traceback, when a process of a ``ddp_spawn`` run dies: which one, and how to resume.

With ``trainer=ddp_cpu`` (``ddp_spawn``) the launching process trains nothing: it waits on the training
processes in torch's ``ProcessContext.join``, which notices one dying at once, stops the others (SIGTERM,
SIGKILL 30 s later) and raises ``ProcessExitedException`` with the process index, pid and signal. So a
killed process (SIGKILL, the out-of-memory killer) never leaves such a run hanging, and needs no watchdog
or shorter process-group timeout; what was missing is the message. :func:`process_death_of` turns the
exception into :class:`TrainingProcessDied`, an interruption like SIGTERM: ``result.json`` says
``interrupted``, the message says how to resume from ``checkpoints/last.ckpt``, and the exit status is the
shell's for that signal (137 for SIGKILL).

The processes torch stops with SIGTERM end quietly (:class:`QuietWhenAPeerDied`): the one line is the launcher's.
"""

import logging
import os
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

import lightning as L
from torch.multiprocessing import ProcessExitedException

from lenet_lightning.training.interruptions import TrainingInterrupted


class TrainingProcessDied(TrainingInterrupted):
    """A training process ended without an error of its own (a signal, or an exit status); the others were stopped."""

    def __init__(self, rank: int, world_size: int, pid: int, exit_code: int, signal_name: str | None) -> None:
        how = f"was killed by {signal_name}" if exit_code < 0 else f"exited with status {exit_code}"
        # Not TrainingInterrupted's message, which names a signal this process received.
        Exception.__init__(self, f"training process {rank} of {world_size} (pid {pid}) {how}")
        self.signum = max(-exit_code, 0)
        self.process_exit_code = exit_code  # negative: the signal that ended it, as multiprocessing reports it

    @property
    def exit_code(self) -> int:
        """128 + the signal, as a shell reports a process it ended (137 for SIGKILL); else the process's status."""
        return 128 + self.signum if self.signum else self.process_exit_code


def process_death_of(error: BaseException, trainer: L.Trainer) -> TrainingProcessDied | None:
    """Recognise how torch reports a ``ddp_spawn`` process that died (``ProcessExitedException``), else ``None``.

    A process that raised an exception is reported by torch as ``ProcessRaisedException``, with its traceback.
    """
    if not isinstance(error, ProcessExitedException):
        return None
    return TrainingProcessDied(
        rank=trainer.node_rank * trainer.num_devices + error.error_index,  # torch counts the processes of this node
        world_size=trainer.world_size,
        pid=error.error_pid,
        exit_code=error.exit_code,
        signal_name=error.signal_name,
    )


class QuietWhenAPeerDied(L.Callback):
    """A training process stopped because another one died ends without a traceback of its own.

    torch stops the other processes with SIGTERM, and Lightning's SIGTERM handler first broadcasts to every
    process: with one gone, that collective fails inside the handler, wherever the process was, even while
    torch records the process's own failure, and the error reached the console as a second traceback.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1:  # Lightning installed its handler just before this hook
            signal.signal(signal.SIGTERM, ending_quietly_if_a_peer_died(signal.getsignal(signal.SIGTERM)))


def ending_quietly_if_a_peer_died(handler: Any) -> Callable[[int, FrameType | None], None]:
    """``handler`` (a SIGTERM handler), but a collective failing in it ends the process with the signal's status."""

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        try:
            if callable(handler):
                handler(signum, frame)
        except RuntimeError:  # gloo's and NCCL's errors: a process of the group is gone
            logging.shutdown()  # what this process logged reaches the run's log file
            os._exit(128 + signum)  # as a shell reports a process ended by the signal

    return on_sigterm
