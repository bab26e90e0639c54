"""The recipe as the project's seed ran it, as a command of its own: the baseline the benchmarks compare against.

    python -m benchmarks.seed_recipe --data-dir ../shared/datasets --dataset mnist --epochs 10

Torchvision's dataset with per-image ToTensor, a DataLoader with 4 workers and a plain PyTorch loop (classic
LeNet, SGD lr 0.9, batch 256, the test set evaluated after every epoch). Only torch, torchvision and the
project's LeNet are imported, so the whole command's wall time is what the seed's own script would take.
The last stdout line is a JSON object: test accuracy and the seconds of the training epochs (evaluation included).
"""

import argparse
import json
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import MNIST, FashionMNIST

from lenet_lightning.model.lenet import LeNet

LR, BATCH_SIZE = 0.9, 256
DATASETS = {"mnist": MNIST, "fashion": FashionMNIST}  # as the seed named them; no Lightning import for this mapping


@dataclass
class PlainRun:
    """What a plain loop measured: seconds of its training epochs (test passes included), examples, test acc."""

    seconds: float
    examples: int
    test_acc: float


Batches = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]


def train_epochs_plain(
    model: torch.nn.Module, train_batches: Batches, test_batches: Batches, epochs: int, device: torch.device
) -> PlainRun:
    """The recipe's plain loop (SGD, summed loss and correct counts, a test pass after each epoch).

    Batches are moved to ``device`` as they come (a no-op for batches already there).
    """
    model = model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    seconds, examples, test_acc = 0.0, 0, 0.0
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        for images, labels in train_batches():
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                loss_sum += loss.detach() * len(labels)
                correct += (logits.argmax(1) == labels).sum()
            examples += len(labels)
        test_acc = accuracy_on_test_set(model, test_batches, device)
        seconds += time.perf_counter() - start
    return PlainRun(seconds, examples, test_acc)


def accuracy_on_test_set(model: torch.nn.Module, test_batches: Batches, device: torch.device) -> float:
    """One pass over the test set in eval mode, as the recipe evaluates after every epoch."""
    model.eval()
    hits, total = 0, 0
    with torch.no_grad():
        for images, labels in test_batches():
            images, labels = images.to(device), labels.to(device)
            hits += int((model(images).argmax(1) == labels).sum())
            total += len(labels)
    return hits / total


def run_seed_recipe(data_dir: Path, dataset: str, epochs: int, seed: int, device: torch.device) -> PlainRun:
    """The seed's pipeline: per-image ToTensor in 4 DataLoader workers feeding the plain loop."""
    torch.manual_seed(seed)
    to_tensor = transforms.ToTensor()
    train = DATASETS[dataset](str(data_dir), train=True, transform=to_tensor)
    test = DATASETS[dataset](str(data_dir), train=False, transform=to_tensor)
    with warnings.catch_warnings():  # 4 workers on fewer cores is the recipe's setting, warned about by torch
        warnings.filterwarnings("ignore", message="This DataLoader will create 4 worker processes")
        train_loader = DataLoader(train, batch_size=BATCH_SIZE, shuffle=True, num_workers=4)
        test_loader = DataLoader(test, batch_size=BATCH_SIZE, shuffle=False, num_workers=4)
        return train_epochs_plain(LeNet(), lambda: train_loader, lambda: test_loader, epochs, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="folder holding MNIST/raw or FashionMNIST/raw")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="mnist")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu")
    args = parser.parse_args()
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    run = run_seed_recipe(args.data_dir, args.dataset, args.epochs, args.seed, device)
    print(f"test acc {run.test_acc:.3f}, {run.examples / run.seconds:.1f} examples/sec on {device}")
    print(json.dumps(asdict(run)), flush=True)


if __name__ == "__main__":
    main()
