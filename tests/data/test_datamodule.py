"""The DataModule on tiny IDX files: shapes, ranges, shuffling, the official splits, missing data."""

import time
from pathlib import Path

import pytest
import torch

from lenet_lightning.data.datamodule import DataUnavailableError, MNISTDataModule, TensorBatches
from tests.conftest import TINY_TEST, TINY_TRAIN, rank_shards


def ready_datamodule(data_dir: Path, name: str = "mnist", **kwargs) -> MNISTDataModule:
    datamodule = MNISTDataModule(name=name, data_dir=str(data_dir), download=False, **kwargs)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


@pytest.mark.parametrize("name", ["mnist", "fashion"])
def test_batches_have_the_recipe_shapes_dtypes_and_range(tiny_data_dir: Path, name: str) -> None:
    datamodule = ready_datamodule(tiny_data_dir, name, batch_size=100)
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (100, 1, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (100,) and labels.dtype == torch.int64
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert images.max() == 1.0  # 255 maps to exactly 1, as ToTensor does
    assert len(datamodule.classes) == 10


def test_splits_are_the_official_files_kept_as_uint8(tiny_data_dir: Path) -> None:
    datamodule = ready_datamodule(tiny_data_dir)
    train_images, _ = datamodule.splits["train"]
    test_images, _ = datamodule.splits["test"]
    assert train_images.shape == (TINY_TRAIN, 28, 28) and train_images.dtype == torch.uint8
    assert test_images.shape == (TINY_TEST, 28, 28)


def test_every_training_example_is_seen_once_per_epoch_in_a_new_order(tiny_data_dir: Path) -> None:
    datamodule = ready_datamodule(tiny_data_dir, batch_size=100)
    loader = datamodule.train_dataloader()
    assert len(loader) == 6  # 512 examples in batches of 100: five full, one of 12
    epochs = [loader.indices() for _ in range(2)]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(TINY_TRAIN))
    assert not torch.equal(epochs[0], epochs[1])
    batches = list(loader)
    assert [len(labels) for _, labels in batches] == [100] * 5 + [12]


@pytest.mark.parametrize(
    "size,batch_size,training,expected",
    [
        (9, 4, True, [4, 5]),  # a last training batch of one joins the batch before it
        (5, 4, True, [5]),
        (10, 4, True, [4, 4, 2]),
        (1, 4, True, [1]),  # nothing to join: a training set of one example
        (9, 4, False, [4, 4, 1]),  # evaluation batches keep every size
    ],
)
def test_training_never_ends_an_epoch_on_a_batch_of_one(size: int, batch_size: int, training: bool, expected) -> None:
    generator = torch.Generator().manual_seed(0) if training else None
    batches = TensorBatches(torch.zeros(size, 28, 28, dtype=torch.uint8), torch.arange(size), batch_size, generator)
    seen = [labels for _, labels in batches]
    assert [len(labels) for labels in seen] == expected and len(batches) == len(expected)
    assert sorted(torch.cat(seen).tolist()) == list(range(size)), "every example once per pass"


def test_batches_follow_the_permutation(tiny_data_dir: Path) -> None:
    datamodule = ready_datamodule(tiny_data_dir, batch_size=64)
    images, labels = datamodule.splits["train"]
    loader = datamodule.train_dataloader()
    state = datamodule.shuffle_generator.get_state()
    order = loader.indices()
    datamodule.shuffle_generator.set_state(state)
    first_images, first_labels = next(iter(loader))
    assert torch.equal(first_labels, labels[order[:64]])
    assert torch.equal(first_images, images[order[:64]].unsqueeze(1).float() / 255)


def test_test_order_is_fixed(tiny_data_dir: Path) -> None:
    datamodule = ready_datamodule(tiny_data_dir)
    (test_loader,) = datamodule.val_dataloader()
    first = torch.cat([labels for _, labels in test_loader])
    second = torch.cat([labels for _, labels in test_loader])
    assert torch.equal(first, second)
    assert torch.equal(first, datamodule.splits["test"][1])


def test_validation_split_is_carved_from_training_and_evaluated_after_the_test_set(tiny_data_dir: Path) -> None:
    datamodule = ready_datamodule(tiny_data_dir, val_size=100)
    assert len(datamodule.splits["train"][1]) == TINY_TRAIN - 100
    assert len(datamodule.splits["val"][1]) == 100
    test_loader, val_loader = datamodule.val_dataloader()
    assert torch.equal(torch.cat([labels for _, labels in test_loader]), datamodule.splits["test"][1])
    assert sum(len(labels) for _, labels in val_loader) == 100


def test_shuffling_resumes_from_the_saved_generator_state(tiny_data_dir: Path) -> None:
    datamodule = ready_datamodule(tiny_data_dir)
    datamodule.train_dataloader().indices()
    saved = datamodule.state_dict()
    expected = datamodule.train_dataloader().indices()
    restored = ready_datamodule(tiny_data_dir)
    restored.load_state_dict(saved)
    assert torch.equal(restored.train_dataloader().indices(), expected)


def test_ranks_get_disjoint_shards_that_cover_the_epoch() -> None:
    shards = rank_shards(10, world_size=3, batch_size=4, seed=0)
    orders = [shard.indices() for shard in shards]
    assert all(len(order) == 4 for order in orders)  # ceil(10 / 3), padded by wrapping around
    seen = torch.cat(orders).tolist()
    assert set(seen) == set(range(10))
    assert len(seen) - len(set(seen)) == 2  # only the two wrap-around examples repeat


def test_missing_files_offline_fail_fast_with_one_line_naming_folder_files_and_fix(tmp_path: Path) -> None:
    datamodule = MNISTDataModule(name="fashion", data_dir=str(tmp_path / "nowhere"), download=True)
    start = time.monotonic()
    with pytest.raises(DataUnavailableError) as raised:
        datamodule.prepare_data()
    assert time.monotonic() - start < 30
    message = str(raised.value)
    assert "\n" not in message
    assert str(tmp_path / "nowhere" / "FashionMNIST" / "raw") in message
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        assert name in message
    assert "LENET_DATA_DIR" in message


def test_test_batches_default_to_the_devices_size_unless_given(tiny_data_dir: Path) -> None:
    """256 on the CPU (larger ones are slower there), the whole test set at once on a GPU; a given size wins."""
    automatic = MNISTDataModule(data_dir=str(tiny_data_dir), download=False)
    assert automatic.eval_batch_size_on(torch.device("cpu")) == 256
    assert automatic.eval_batch_size_on(torch.device("cuda")) == 10_000
    given = MNISTDataModule(data_dir=str(tiny_data_dir), eval_batch_size=50, download=False)
    assert given.eval_batch_size_on(torch.device("cuda")) == given.eval_batch_size_on(torch.device("cpu")) == 50
    given.setup()
    assert [len(labels) for _, labels in given.test_dataloader()] == [50, 50, TINY_TEST - 100]
