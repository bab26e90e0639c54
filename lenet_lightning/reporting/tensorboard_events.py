"""Raw records in a run's TensorBoard event file, for what Lightning's logger has no call for.

The HPARAMS session and the "session start" marker that makes TensorBoard drop steps logged past a resumed
checkpoint are records SummaryWriter writes only through its file writer, which it keeps private; this is the
one place that reaches for it (the same call ``SummaryWriter(purge_step=...)`` makes), and for the list of
embeddings it keeps for the projector's config.
"""

import time
from pathlib import Path

from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary


def write_summaries(logger: TensorBoardLogger, summaries: list[Summary]) -> None:
    """Append summaries (e.g. the HPARAMS plugin's) to the logger's event file, flushed at once."""
    writer = logger.experiment._get_file_writer()
    for summary in summaries:
        writer.add_summary(summary)
    writer.flush()


def restart_at(logger: TensorBoardLogger, step: int) -> None:
    """Mark a restart at ``step``: TensorBoard discards what the file holds from that step on."""
    logger.experiment._get_file_writer().add_event(Event(step=step, session_log=SessionLog(status=SessionLog.START)))


def wait_to_be_read_last(log_dir: Path) -> None:
    """Wait (under a second) until an event file made now would be read after every one ``log_dir`` holds.

    TensorBoard replays a folder's event files in name order, and a name starts with the second its file was
    made, then host and process id: a run resumed within the second its killed predecessor started would
    otherwise be replayed first, and its restart marker would drop nothing.
    """
    seconds = [
        int(part) for path in log_dir.glob("events.out.tfevents.*") if (part := path.name.split(".")[3]).isdigit()
    ]
    while seconds and time.time() < max(seconds) + 1:
        time.sleep(max(seconds) + 1 - time.time())


def forget_embeddings(logger: TensorBoardLogger) -> None:
    """Make the next ``add_embedding`` write a projector config that names only its own embedding.

    SummaryWriter remembers every embedding it wrote and rewrites ``projector_config.pbtxt`` with all of them.
    """
    if hasattr(logger.experiment, "_projector_config"):
        del logger.experiment._projector_config
