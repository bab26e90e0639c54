"""Training throughput of the recipe (classic LeNet, batch 256, lr 0.9) in four pipelines, from one command.

    python -m benchmarks.throughput --data-dir ../shared/datasets --epochs 5 --rounds 3 --json results.json

- seed:        the original pipeline (``benchmarks/seed_recipe.py``): torchvision dataset with per-image
               ToTensor, DataLoader with 4 workers, a plain PyTorch loop.
- floor:       a plain PyTorch loop over in-memory tensors, no framework.
- floor_tuned: the same loop with the project's CPU settings (``convert_to_fast_cpu_layers`` on the same
               model, freed host memory kept for reuse), so ``project / floor_tuned`` is the cost of the
               framework alone.
- project:     ``lenet_lightning``'s own Trainer path with the settings ``python -m lenet_lightning.train``
               uses (TensorBoard logger, progress bar, checkpoint after every epoch, ``fast_cpu_layers`` on).

All four build the project's LeNet (the recipe's, in stock torch.nn layers); floor_tuned and project then swap
in the CPU layers.

Each figure is training examples per second of wall clock over the training epochs, each epoch's test-set
evaluation included (data loading, start-up and model building excluded, for all alike). Every measurement
runs in a fresh Python process, so no pipeline inherits another's process state (allocator settings, thread
pools, oneDNN caches): measured here, that state alone moved a plain loop's speed by up to 1.5x. Rounds run
the pipelines interleaved (seed, floor, floor_tuned, project, seed, ...) after a one-epoch warm-up round, so
machine noise hits all of them alike; the table shows medians over rounds.
"""

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from benchmarks.seed_recipe import BATCH_SIZE, run_seed_recipe, train_epochs_plain
from lenet_lightning.data.datamodule import DATASETS
from lenet_lightning.model.lenet import LeNet
from lenet_lightning.speed.cpu_layers import convert_to_fast_cpu_layers
from lenet_lightning.speed.host_memory import keep_freed_host_memory
from lenet_lightning.training.run import fit

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "conf"
# Sigmoid LeNet leaves its plateau at a moment that shifts with the shuffling: after 5 epochs on MNIST,
# pipelines seeing the same seed but different batch orders differ by up to about 0.05 in test accuracy.
ACCURACY_TOLERANCE = 0.1


@dataclass
class Measurement:
    pipeline: str
    examples_per_second: float
    test_acc: float


def run_seed(data_dir: Path, dataset: str, epochs: int, seed: int, accelerator: str = "cpu") -> Measurement:
    run = run_seed_recipe(data_dir, dataset, epochs, seed, torch_device(accelerator))
    return Measurement("seed", run.examples / run.seconds, run.test_acc)


def run_floor(
    data_dir: Path, dataset: str, epochs: int, seed: int, accelerator: str = "cpu", tuned: bool = False
) -> Measurement:
    torch.manual_seed(seed)
    device = torch_device(accelerator)
    model = LeNet()
    if tuned:
        convert_to_fast_cpu_layers(model)
        keep_freed_host_memory()
    dataset_class = DATASETS[dataset]
    train = dataset_class(str(data_dir), train=True)
    test = dataset_class(str(data_dir), train=False)
    train_images, train_labels = train.data.to(device), train.targets.to(device)
    test_images, test_labels = (test.data.unsqueeze(1).float() / 255).to(device), test.targets.to(device)

    def train_batches():
        for batch in torch.randperm(len(train_labels), device=device).split(BATCH_SIZE):
            yield train_images[batch].unsqueeze(1).float() / 255, train_labels[batch]

    def test_batches():
        return zip(test_images.split(BATCH_SIZE), test_labels.split(BATCH_SIZE), strict=True)

    run = train_epochs_plain(model, train_batches, test_batches, epochs, device)
    return Measurement("floor_tuned" if tuned else "floor", run.examples / run.seconds, run.test_acc)


def run_floor_tuned(data_dir: Path, dataset: str, epochs: int, seed: int, accelerator: str = "cpu") -> Measurement:
    return run_floor(data_dir, dataset, epochs, seed, accelerator, tuned=True)


def run_project(
    data_dir: Path, dataset: str, epochs: int, seed: int, accelerator: str = "cpu", overrides: tuple[str, ...] = ()
) -> Measurement:
    with tempfile.TemporaryDirectory() as output_dir:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(
                config_name="train",
                overrides=[
                    f"data_dir={data_dir}",
                    f"dataset={dataset}",
                    f"epochs={epochs}",
                    f"seed={seed}",
                    f"accelerator={accelerator}",
                    *overrides,
                ],
            )
        with open_dict(cfg):
            cfg.output_dir = output_dir
        result = fit(cfg)
    return Measurement("project", result.examples_per_second, result.test_acc)


PIPELINES: dict[str, Callable[..., Measurement]] = {
    "seed": run_seed,
    "floor": run_floor,
    "floor_tuned": run_floor_tuned,
    "project": run_project,
}


def torch_device(accelerator: str) -> torch.device:
    return torch.device("cuda" if accelerator == "gpu" else "cpu")


def measure_in_fresh_process(
    name: str,
    data_dir: Path,
    dataset: str,
    epochs: int,
    seed: int,
    accelerator: str = "cpu",
    project_overrides: tuple[str, ...] = (),
) -> Measurement:
    """Run one pipeline in a new ``python`` process, as a user's script would run, and read back its measurement.

    The child runs from the repository root (so ``benchmarks`` imports), with the data folder made absolute;
    its own output (model summary, progress bars) goes to stderr, and its last stdout line is the result.
    """
    command = [
        *(sys.executable, "-m", "benchmarks.throughput", "--measure", name, "--data-dir", str(data_dir.resolve())),
        *("--dataset", dataset, "--epochs", str(epochs), "--seed", str(seed), "--accelerator", accelerator),
        *(f"--project-override={override}" for override in project_overrides),
    ]
    child = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True)
    return Measurement(**json.loads(child.stdout.splitlines()[-1]))


def benchmark(
    data_dir: Path,
    dataset: str,
    epochs: int,
    rounds: int,
    accelerator: str = "cpu",
    project_overrides: tuple[str, ...] = (),
    seed: int = 0,
    warm_up: bool = True,
) -> dict[str, list[Measurement]]:
    """Warm up each pipeline for one epoch, then run ``rounds`` interleaved rounds of ``epochs`` each."""

    def measure(name: str, epochs: int, seed: int) -> Measurement:
        return measure_in_fresh_process(name, data_dir, dataset, epochs, seed, accelerator, project_overrides)

    if warm_up:
        for name in PIPELINES:
            measure(name, 1, seed)
    measurements: dict[str, list[Measurement]] = {name: [] for name in PIPELINES}
    for round_index in range(rounds):
        for name in PIPELINES:
            measurement = measure(name, epochs, seed + round_index)
            measurements[name].append(measurement)
            print(
                f"round {round_index + 1}/{rounds} {name:11s} {measurement.examples_per_second:9.1f} ex/s "
                f"test acc {measurement.test_acc:.3f}",
                flush=True,
            )
    return measurements


def summarize(measurements: dict[str, list[Measurement]]) -> dict[str, dict[str, float]]:
    table = {
        name: {
            "examples_per_second": statistics.median(m.examples_per_second for m in runs),
            "test_acc": statistics.median(m.test_acc for m in runs),
        }
        for name, runs in measurements.items()
    }
    for row in table.values():
        for baseline in ("seed", "floor", "floor_tuned"):
            row[f"vs_{baseline}"] = row["examples_per_second"] / table[baseline]["examples_per_second"]
    return table


def accuracy_comparable(table: dict[str, dict[str, float]]) -> bool:
    accuracies = [row["test_acc"] for row in table.values()]
    return max(accuracies) - min(accuracies) <= ACCURACY_TOLERANCE


def format_table(table: dict[str, dict[str, float]]) -> str:
    lines = [
        "| pipeline | examples/sec | vs seed | vs floor | vs floor_tuned | test acc |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in table.items():
        lines.append(
            f"| {name} | {row['examples_per_second']:.0f} | {row['vs_seed']:.2f}x | {row['vs_floor']:.2f}x "
            f"| {row['vs_floor_tuned']:.2f}x | {row['test_acc']:.3f} |"
        )
    return "\n".join(lines)


def measure_one(args: argparse.Namespace) -> None:
    """``--measure NAME``: run one pipeline here and print its measurement as the last stdout line."""
    extra = {"overrides": tuple(args.project_override)} if args.measure == "project" else {}
    with contextlib.redirect_stdout(sys.stderr):
        measurement = PIPELINES[args.measure](
            args.data_dir, args.dataset, args.epochs, args.seed, accelerator=args.accelerator, **extra
        )
    print(json.dumps(asdict(measurement)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="folder holding MNIST/raw or FashionMNIST/raw")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="mnist")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="seed of the first round; round k uses seed + k - 1")
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu", help="where all pipelines train")
    parser.add_argument(
        "--project-override", action="append", default=[], help="extra Hydra override for the project pipeline"
    )
    parser.add_argument("--json", type=Path, help="also write the table and every round's numbers here")
    parser.add_argument("--measure", choices=sorted(PIPELINES), help="run just this pipeline once (used internally)")
    args = parser.parse_args()
    if args.measure:
        measure_one(args)
        return

    measurements = benchmark(
        args.data_dir,
        args.dataset,
        args.epochs,
        args.rounds,
        args.accelerator,
        tuple(args.project_override),
        args.seed,
    )
    table = summarize(measurements)
    comparable = accuracy_comparable(table)
    device = torch.cuda.get_device_name() if args.accelerator == "gpu" else f"cpu, {torch.get_num_threads()} threads"
    overrides = " ".join(args.project_override) or "none"
    print(
        f"\n{args.dataset}, {args.epochs} epochs, median of {args.rounds} rounds, {device}, "
        f"project overrides: {overrides}\n{format_table(table)}"
    )
    print(f"accuracy check (spread <= {ACCURACY_TOLERANCE}): {'ok' if comparable else 'FAILED'}")
    if args.json:
        rounds = {name: [asdict(m) for m in runs] for name, runs in measurements.items()}
        payload = {
            "config": vars(args) | {"data_dir": str(args.data_dir), "json": str(args.json), "device": device},
            "table": table,
            "rounds": rounds,
            "accuracy_comparable": comparable,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    if not comparable:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
