"""Time to accuracy: the speedrun experiments against the seed recipe's 10-epoch run, as whole commands.

    python -m benchmarks.time_to_accuracy --data-dir ../shared/datasets --seeds 5 --json tta.json

For each data set (MNIST, Fashion-MNIST) and each seed, one round runs, each in a fresh process and in turn:

- seed_recipe: ``python -m benchmarks.seed_recipe --epochs 10``, the recipe as the project's seed ran it
  (torchvision dataset, DataLoader with 4 workers, plain loop), the baseline of the ratios;
- recipe (with ``--with-recipe``): ``python -m lenet_lightning.train``, the same recipe with this project;
- speedrun: ``python -m lenet_lightning.train experiment=speedrun_<data set>``.

Rounds interleave the commands (seed 0 of each, then seed 1 of each, ...), so load on the machine hits them
alike. Per run: the whole command's wall time (launch to exit, measured here: start-up, data loading, training,
final figures and checkpoints), its training time (the training epochs with their per-epoch test passes, as
the command measured them) and its final test accuracy. The summary gives, per command, the accuracy of every
seed, their mean and minimum, the mean times, and the mean wall time over the seed recipe's.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "seed_recipe"
DATASETS = ("mnist", "fashion")


@dataclass(frozen=True)
class Goal:
    """What a speedrun promises on its data set (the README's time-to-accuracy table)."""

    mean_acc: float
    min_acc: float
    max_wall_ratio: float


GOALS = {"mnist": Goal(0.990, 0.988, 0.2), "fashion": Goal(0.910, 0.905, 0.5)}


@dataclass
class Run:
    command: str
    dataset: str
    seed: int
    wall_seconds: float
    train_seconds: float
    test_acc: float


def seed_recipe_command(
    data_dir: Path, dataset: str, seed: int, accelerator: str, _: Path, __: tuple[str, ...]
) -> list[str]:
    return [
        *(sys.executable, "-m", "benchmarks.seed_recipe", "--data-dir", str(data_dir), "--dataset", dataset),
        *("--epochs", "10", "--seed", str(seed), "--accelerator", accelerator),
    ]


def train_command(*overrides: str) -> Callable[..., list[str]]:
    """``python -m lenet_lightning.train`` with ``overrides``, writing its run folder where it is told to."""

    def command(
        data_dir: Path, dataset: str, seed: int, accelerator: str, run_dir: Path, extra: tuple[str, ...]
    ) -> list[str]:
        keys = [f"data_dir={data_dir}", f"seed={seed}", f"accelerator={accelerator}", f"hydra.run.dir={run_dir}"]
        own = [override.format(dataset=dataset) for override in overrides]
        return [sys.executable, "-m", "lenet_lightning.train", *own, *keys, *extra]

    return command


COMMANDS = {
    BASELINE: seed_recipe_command,
    "recipe": train_command("dataset={dataset}"),
    "speedrun": train_command("experiment=speedrun_{dataset}"),
}


def measure(
    name: str, data_dir: Path, dataset: str, seed: int, accelerator: str, project_overrides: tuple[str, ...] = ()
) -> Run:
    """Run one command in a fresh process from the repository root; time it whole and read back what it measured."""
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(scratch) / "run"
        argv = COMMANDS[name](data_dir.resolve(), dataset, seed, accelerator, run_dir, project_overrides)
        start = time.perf_counter()
        child = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        wall_seconds = time.perf_counter() - start
        if child.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed with exit {child.returncode}:\n{child.stderr[-2000:]}")
        if name == BASELINE:
            measured = json.loads(child.stdout.splitlines()[-1])
            train_seconds, test_acc = measured["seconds"], measured["test_acc"]
        else:
            result = json.loads((run_dir / "result.json").read_text())
            train_seconds, test_acc = result["wall_seconds"], result["test_acc"]
    return Run(name, dataset, seed, wall_seconds, train_seconds, test_acc)


def benchmark(
    data_dir: Path,
    datasets: list[str],
    seeds: list[int],
    names: list[str],
    accelerator: str = "cpu",
    project_overrides: tuple[str, ...] = (),
    warm_up: bool = True,
    report: Callable[[Run], None] = lambda run: None,
) -> list[Run]:
    """Every command for every seed and data set, interleaved; a first untimed speedrun warms the file caches."""
    if warm_up:
        measure("speedrun", data_dir, datasets[0], seeds[0], accelerator, project_overrides)
    runs = []
    for seed in seeds:
        for dataset in datasets:
            for name in names:
                runs.append(measure(name, data_dir, dataset, seed, accelerator, project_overrides))
                report(runs[-1])
    return runs


def summarize(runs: list[Run]) -> list[dict]:
    """One row per (data set, command): accuracies of all seeds, mean and min, mean times, wall time ratio."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.dataset, run.command), []).append(run)
    rows = []
    for (dataset, name), group in groups.items():
        accuracies = [run.test_acc for run in group]
        rows.append(
            {
                "dataset": dataset,
                "command": name,
                "seeds": [run.seed for run in group],
                "test_acc": accuracies,
                "mean_acc": statistics.fmean(accuracies),
                "min_acc": min(accuracies),
                "train_seconds": statistics.fmean(run.train_seconds for run in group),
                "wall_seconds": statistics.fmean(run.wall_seconds for run in group),
            }
        )
    for row in rows:
        baseline = [r for r in rows if r["dataset"] == row["dataset"] and r["command"] == BASELINE]
        row["wall_vs_seed_recipe"] = row["wall_seconds"] / baseline[0]["wall_seconds"] if baseline else None
    return rows


def verdict(row: dict) -> str:
    """Whether a speedrun row meets its goal; empty for the other commands."""
    goal = GOALS.get(row["dataset"])
    if row["command"] != "speedrun" or goal is None or row["wall_vs_seed_recipe"] is None:
        return ""
    met = (
        row["mean_acc"] >= goal.mean_acc
        and row["min_acc"] >= goal.min_acc
        and row["wall_vs_seed_recipe"] <= goal.max_wall_ratio
    )
    wanted = f"mean >= {goal.mean_acc}, min >= {goal.min_acc}, wall <= {goal.max_wall_ratio}x seed recipe"
    return f"{'met' if met else 'MISSED'} ({wanted})"


def format_table(rows: list[dict]) -> str:
    lines = [
        "| data set | command | test acc per seed | mean | min | train s | wall s | wall vs seed recipe | goal |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        per_seed = " ".join(f"{acc:.4f}" for acc in row["test_acc"])
        ratio = f"{row['wall_vs_seed_recipe']:.2f}x" if row["wall_vs_seed_recipe"] is not None else "-"
        lines.append(
            f"| {row['dataset']} | {row['command']} | {per_seed} | {row['mean_acc']:.4f} | {row['min_acc']:.4f} "
            f"| {row['train_seconds']:.1f} | {row['wall_seconds']:.1f} | {ratio} | {verdict(row)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="folder holding MNIST/raw and FashionMNIST/raw")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1, one round each")
    parser.add_argument("--with-recipe", action="store_true", help="also time the project's own 10-epoch recipe")
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument(
        "--project-override", action="append", default=[], help="extra Hydra override for the project's commands"
    )
    parser.add_argument("--json", type=Path, help="also write every run and the summary here")
    parser.add_argument("--no-warm-up", action="store_true", help="skip the untimed speedrun first")
    args = parser.parse_args()

    names = [BASELINE, *(["recipe"] if args.with_recipe else []), "speedrun"]

    def report(run: Run) -> None:
        print(
            f"{run.dataset:8s} seed {run.seed} {run.command:12s} test acc {run.test_acc:.4f}  "
            f"train {run.train_seconds:6.1f} s  wall {run.wall_seconds:6.1f} s",
            flush=True,
        )

    seeds, overrides = list(range(args.seeds)), tuple(args.project_override)
    runs = benchmark(
        args.data_dir, args.datasets, seeds, names, args.accelerator, overrides, not args.no_warm_up, report=report
    )
    rows = summarize(runs)
    extra = f", project overrides: {' '.join(overrides)}" if overrides else ""
    print(f"\n{args.seeds} seeds, accelerator {args.accelerator}{extra}; times are means over seeds")
    print(format_table(rows))
    if args.json:
        payload = {"config": vars(args) | {"data_dir": str(args.data_dir), "json": str(args.json)}}
        payload |= {"runs": [asdict(run) for run in runs], "summary": rows}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
