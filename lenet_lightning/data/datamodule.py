"""One DataModule for MNIST and Fashion-MNIST: IDX files -> one uint8 tensor per split -> batches.

Batches are sliced from in-memory tensors with a shuffled permutation instead of a per-image
``DataLoader``: decoding 60,000 images one by one through PIL costs more than training LeNet on them.
"""

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torchvision.datasets import MNIST, FashionMNIST

from lenet_lightning.data.files import DataUnavailableError as DataUnavailableError  # raised by prepare_data
from lenet_lightning.data.files import ensure_dataset_files, expected_names

log = logging.getLogger(__name__)
DATASETS: dict[str, type[MNIST]] = {"mnist": MNIST, "fashion": FashionMNIST}
# Test-time batches when eval_batch_size is null; any size gives the same accuracy. On the CPU, above ~500 images
# oneDNN's buffers outgrow glibc's largest kept block (32 MiB) and are faulted in again on every batch (3x slower).
CPU_EVAL_BATCH_SIZE = 256
# On a GPU each batch costs a few dozen kernel launches and the per-class counts a host sync: the whole test set
# at once (about 0.3 GB of activations) makes the per-epoch test pass one batch.
GPU_EVAL_BATCH_SIZE = 10_000


def to_network_input(images: Tensor) -> Tensor:
    """uint8 N x 28 x 28 images as the N x 1 x 28 x 28 float32 batch in [0, 1] LeNet takes (the recipe's ToTensor)."""
    return images.unsqueeze(1).float().div_(255)


class TensorBatches:
    """Iterate over (images, labels) batches of in-memory tensors, as Lightning's loops expect.

    uint8 images are scaled to float32 in [0, 1] one batch at a time, on whatever device they live on.
    With ``generator`` set, each pass draws a new permutation from it (so the order changes every epoch
    and resumes exactly when the generator state is restored). ``rank``/``world_size`` give each process
    of a distributed run its own disjoint share of every pass: every process holds the same generator
    state, so all draw the same permutation and take every ``world_size``-th index of it. Shuffled
    (training) shares are padded by wrapping around to equal length, so all processes take the same
    number of optimizer steps; evaluation shares are not, so every test example is counted exactly once.
    A shuffled (training) pass never ends on a batch of one example, which batch norm cannot train on (the
    variance of one value is undefined): that example joins the batch before it, so every example is still
    seen once per epoch. Evaluation batches keep whatever size is left over.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        generator: torch.Generator | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.generator = generator
        self.rank, self.world_size = rank, world_size

    def _shard_size(self) -> int:
        n = len(self.labels)
        if self.generator is not None:
            return math.ceil(n / self.world_size)
        return len(range(self.rank, n, self.world_size))

    def _batch_sizes(self) -> list[int]:
        """The size of each batch of a pass: full batches, then the remainder (folded into the last when training)."""
        full, remainder = divmod(self._shard_size(), self.batch_size)
        sizes = [self.batch_size] * full
        if remainder == 1 and full and self.generator is not None:
            sizes[-1] += 1
        elif remainder:
            sizes.append(remainder)
        return sizes

    def __len__(self) -> int:
        return len(self._batch_sizes())

    def indices(self) -> Tensor:
        """This pass's example indices for this rank (drawing a fresh permutation when shuffling)."""
        n = len(self.labels)
        if self.generator is None:
            order = torch.arange(self.rank, n, self.world_size)
        else:
            order = torch.randperm(n, generator=self.generator)
            if self.world_size > 1:
                # Pad by wrapping around so every rank gets the same number of batches, like DistributedSampler.
                total = self._shard_size() * self.world_size
                order = torch.cat([order, order[: total - n]])[self.rank :: self.world_size]
        return order.to(self.images.device)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self.indices()
        for batch in order.split(self._batch_sizes()):
            # index_select is a plain row gather; images[batch] goes through the general advanced-indexing
            # kernel, about 20x slower on the CPU for this shape.
            images = self.images.index_select(0, batch)
            yield to_network_input(images), self.labels.index_select(0, batch)


class MNISTDataModule(L.LightningDataModule):
    """Serves the official 60k/10k splits of MNIST or Fashion-MNIST, with an optional validation split.

    The validation split (``val_size`` examples held out of the training set, 0 by default as in the
    recipe) and the test set are both evaluated after every training epoch, in batches of
    ``eval_batch_size`` or, when that is None, of the device's own size (:meth:`eval_batch_size_on`).
    """

    def __init__(
        self,
        name: str = "mnist",
        data_dir: str = "data",
        batch_size: int = 256,
        eval_batch_size: int | None = None,
        val_size: int = 0,
        seed: int = 0,
        download: bool = True,
    ) -> None:
        super().__init__()
        self.name = name
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_size = val_size
        self.seed = seed
        self.download = download
        self.shuffle_generator = torch.Generator().manual_seed(seed)
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}

    @property
    def dataset_class(self) -> type[MNIST]:
        return DATASETS[self.name]

    @property
    def classes(self) -> list[str]:
        return list(self.dataset_class.classes)

    @property
    def raw_folder(self) -> Path:
        return self.data_dir / self.dataset_class.__name__ / "raw"

    def expected_files(self) -> list[Path]:
        return [self.raw_folder / name for name in expected_names(self.dataset_class)]

    def missing_files(self) -> list[Path]:
        return [path for path in self.expected_files() if not path.is_file()]

    def prepare_data(self) -> None:
        """Make sure the four IDX files are on disk and sound, downloading missing or damaged ones when allowed."""
        ensure_dataset_files(self.dataset_class, self.data_dir, download=self.download)

    def _load_split(self, train: bool) -> tuple[Tensor, Tensor]:
        dataset = self.dataset_class(str(self.data_dir), train=train, download=False)
        return dataset.data, dataset.targets

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        # Headers checked on every rank before loading; cheap after prepare_data has md5-checked them.
        ensure_dataset_files(self.dataset_class, self.data_dir, download=False)
        train_images, train_labels = self._load_split(train=True)
        test_images, test_labels = self._load_split(train=False)
        device = self._device()
        if self.val_size:
            # A fixed split (its own seed, independent of the shuffling) so every run validates on the same images.
            order = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(self.seed))
            val_idx, train_idx = order[: self.val_size], order[self.val_size :]
            self.splits["val"] = (train_images[val_idx].to(device), train_labels[val_idx].to(device))
            train_images, train_labels = train_images[train_idx], train_labels[train_idx]
        self.splits["train"] = (train_images.to(device), train_labels.to(device))
        self.splits["test"] = (test_images.to(device), test_labels.to(device))
        sizes = ", ".join(f"{len(labels)} {split}" for split, (_, labels) in self.splits.items())
        log.debug("%s loaded from %s: %s images on %s", self.dataset_class.__name__, self.raw_folder, sizes, device)

    def _device(self) -> torch.device:
        """Where the splits live and batches are built: the training device, so no step copies from the host."""
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def eval_batch_size_on(self, device: torch.device) -> int:
        """``eval_batch_size`` when given, else :data:`CPU_EVAL_BATCH_SIZE` on the CPU and :data:`GPU_EVAL_BATCH_SIZE`
        on an accelerator."""
        if self.eval_batch_size is not None:
            return self.eval_batch_size
        return CPU_EVAL_BATCH_SIZE if device.type == "cpu" else GPU_EVAL_BATCH_SIZE

    def _batches(self, split: str, batch_size: int, shuffle: bool) -> TensorBatches:
        images, labels = self.splits[split]
        trainer = self.trainer
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        generator = self.shuffle_generator if shuffle else None
        return TensorBatches(images, labels, batch_size, generator, rank=rank, world_size=world_size)

    def train_dataloader(self) -> TensorBatches:
        return self._batches("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> list[TensorBatches]:
        """The official test set first, then the validation split when there is one."""
        splits = ["test", "val"] if "val" in self.splits else ["test"]
        batch_size = self.eval_batch_size_on(self._device())
        return [self._batches(split, batch_size, shuffle=False) for split in splits]

    def test_dataloader(self) -> TensorBatches:
        return self._batches("test", self.eval_batch_size_on(self._device()), shuffle=False)

    def state_dict(self) -> dict[str, Any]:
        """The shuffling generator's state, so a resumed run draws the same permutations as an unbroken one."""
        return {"shuffle_generator": self.shuffle_generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.shuffle_generator.set_state(state_dict["shuffle_generator"])

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the generator's state as bytes: ddp_spawn sends the DataModule to each process through shared
        memory, where a ``torch.Generator`` (whose pickled state is a temporary tensor) arrives broken
        ("unable to resize file")."""
        return {**self.__dict__, "shuffle_generator": self.shuffle_generator.get_state().numpy().tobytes()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        generator = torch.Generator()
        generator.set_state(torch.frombuffer(bytearray(state["shuffle_generator"]), dtype=torch.uint8))
        self.__dict__.update({**state, "shuffle_generator": generator})
