"""What the TensorBoard insight costs: wall time of whole training runs with it on (the default) and off.

    python -m benchmarks.tensorboard_cost --data-dir ../shared/datasets --epochs 10 --rounds 5

"On" is the default config: per-class test accuracy every epoch, then precision-recall curves and the projector's
sample. "Off" turns those three off (``SETTINGS["off"]``); the confusion matrix and mistakes are drawn in both.
Every run is a fresh ``python -m lenet_lightning.train`` process on the CPU with the same seed, in a temporary
folder of its own, timed from start to exit by ``benchmarks.time_to_accuracy.measure`` (start-up, data loading
and the end-of-run analysis included: what a user waits for). Rounds alternate the order (on, off, then off, on,
...) after an untimed warm-up run, so machine noise and drift hit both alike; the medians and their ratio are
printed.
"""

import argparse
import json
import statistics
from pathlib import Path

from benchmarks.time_to_accuracy import measure

SETTINGS: dict[str, tuple[str, ...]] = {
    "on": (),
    "off": (
        "callbacks.per_class_accuracy=null",
        "callbacks.error_analysis.pr_curves=false",
        "callbacks.error_analysis.projector_images=0",
    ),
}


def timed_run(data_dir: Path, dataset: str, epochs: int, seed: int, overrides: tuple[str, ...]) -> float:
    """Seconds of one ``python -m lenet_lightning.train`` process, start to exit; a failed run ends the benchmark."""
    return measure("recipe", data_dir, dataset, seed, "cpu", (f"epochs={epochs}", *overrides)).wall_seconds


def benchmark(
    data_dir: Path, dataset: str, epochs: int, rounds: int, seed: int = 0, warm_up: bool = True
) -> dict[str, list[float]]:
    """``rounds`` interleaved runs of each setting; returns their wall times in seconds."""
    seconds: dict[str, list[float]] = {name: [] for name in SETTINGS}
    if warm_up:  # file caches, Python's bytecode: paid once, by neither setting
        timed_run(data_dir, dataset, 1, seed, ())
    for round_index in range(rounds):
        order = list(SETTINGS) if round_index % 2 == 0 else list(reversed(SETTINGS))
        for name in order:
            seconds[name].append(timed_run(data_dir, dataset, epochs, seed, SETTINGS[name]))
            print(f"round {round_index + 1}/{rounds} {name:3s} {seconds[name][-1]:7.2f} s", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="folder holding MNIST/raw or FashionMNIST/raw")
    parser.add_argument("--dataset", choices=["mnist", "fashion"], default="mnist")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="the seed of every run")
    parser.add_argument("--no-warm-up", action="store_true", help="skip the untimed one-epoch run first")
    parser.add_argument("--json", type=Path, help="also write every run's seconds and the medians here")
    args = parser.parse_args()

    seconds = benchmark(args.data_dir, args.dataset, args.epochs, args.rounds, args.seed, not args.no_warm_up)
    medians = {name: statistics.median(runs) for name, runs in seconds.items()}
    ratio = medians["on"] / medians["off"]
    print(f"\n{args.dataset}, {args.epochs} epochs, median of {args.rounds} fresh-process runs each, cpu")
    for name, median in medians.items():
        print(f"{name:3s}: {median:.2f} s")
    print(f"ratio on/off: {ratio:.3f} ({(ratio - 1) * 100:+.1f}%)")
    if args.json:
        payload = {"config": {**vars(args), "data_dir": str(args.data_dir), "json": str(args.json)}}
        args.json.write_text(json.dumps({**payload, "seconds": seconds, "medians": medians, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
