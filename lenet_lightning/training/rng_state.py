"""The random number generators' states travel with each checkpoint, so a resumed run draws what the unbroken one drew.

Dropout and augmentation draw from torch's global generators (the CPU one, and each GPU's own on a GPU); Lightning
saves the weights, optimizer and loops but none of those, so a resumed run would drop other units and shift other
images than the unbroken run from its first step on. The DataModule's shuffling has its own generator, saved
in its own ``state_dict``. Python's ``random`` and NumPy's global generator are saved too, for code that uses them.
The states are saved as tensors, lists and numbers, which ``torch.load(weights_only=True)`` accepts.
"""

import random
from typing import Any

import lightning as L
import numpy as np
import torch


class RestoreRandomState(L.Callback):
    """Save the global RNG states in each checkpoint and set them again when training resumes from one.

    The states are read when the checkpoint is written (after an epoch's last step and evaluation), which is where
    the resumed run's next epoch starts from. In a run over several processes the checkpoint holds rank 0's states.
    CUDA's states are saved only once CUDA is in use, so a CPU run never starts CUDA to save them.
    """

    def state_dict(self) -> dict[str, Any]:
        numpy_state = np.random.get_state(legacy=False)
        key, position = numpy_state["state"]["key"], numpy_state["state"]["pos"]
        state = {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": {**numpy_state, "state": {"key": key.tolist(), "pos": int(position)}},  # no ndarray inside
        }
        if torch.cuda.is_initialized():
            state["torch.cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        random.setstate(state_dict["python"])
        np.random.set_state(state_dict["numpy"])
        if torch.cuda.is_available():
            # A checkpoint from a machine with more GPUs than this one: the GPUs present take their saved states.
            for device, cuda_state in enumerate(state_dict.get("torch.cuda", [])[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(cuda_state, device)
