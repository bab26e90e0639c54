#!/usr/bin/env bash
# The GPU checks of the project in one run: the CUDA tests, then the throughput benchmark (seed, floor,
# floor_graphed, project, project_graphed; 10 epochs of the recipe) and the speedruns' time to accuracy,
# each writing its log and JSON to $OUT as it finishes, so a run cut short still returns what it measured.
#
#   bash benchmarks/gpu_check.sh prepare   # here, with pip's registry in reach: fills .gpu/ (git-ignored)
#   bash benchmarks/gpu_check.sh run       # on the GPU machine, from the checkout, with .gpu/ beside it
#                                          # (the device tool: command "bash benchmarks/gpu_check.sh run",
#                                          # carry [".gpu"], timeout_s 600)
#
# The GPU machine has torch, torchvision, lightning, torchmetrics, tensorboard and pytest but no Hydra, and
# cannot reach the data sets: `prepare` puts the Hydra wheels and gzipped copies of ../shared/datasets in
# .gpu/, which travels with the checkout (about 45 MB).
set -euo pipefail
cd "$(dirname "$0")/.."

prepare() {
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
    rm -rf .gpu && mkdir -p .gpu/whl
    # Pure-Python packages, at the versions CI tests (.ci/constraints.txt); antlr4's exists only as source.
    pin() { grep -i "^$1==" .ci/constraints.txt; }
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d .gpu/whl "$(pin hydra-core)" "$(pin omegaconf)"
    python3 -m pip wheel --quiet --no-deps -w .gpu/whl "$(pin antlr4-python3-runtime)"
    for folder in MNIST FashionMNIST; do
        mkdir -p ".gpu/data/$folder/raw"
        for file in ../shared/datasets/"$folder"/raw/*; do
            gzip -c "$file" >".gpu/data/$folder/raw/$(basename "$file").gz"
        done
    done
    du -sh .gpu
}

run() {
    : "${OUT:?set OUT to the folder that receives the logs and JSON}"
    python3 -m pip install --quiet --no-index --no-deps --target /tmp/site .gpu/whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 LENET_DATA_DIR=/tmp/data
    for folder in MNIST FashionMNIST; do
        mkdir -p "/tmp/data/$folder/raw"
        for file in .gpu/data/"$folder"/raw/*.gz; do
            gunzip -c "$file" >"/tmp/data/$folder/raw/$(basename "$file" .gz)"
        done
    done
    {
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
        python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"
    } 2>&1 | tee "$OUT/device.txt" || true
    # Each stage is bounded so that the ones after it still run, all within a 10-minute command; a failing stage
    # does not stop the others. Six files come back (the device tool returns at most eight).
    timeout 170 python3 -m pytest -m gpu -p no:cacheprovider -q -rP --durations=0 \
        tests/speed/test_cuda_graph.py tests/benchmarks/test_throughput_benchmark.py 2>&1 | tee "$OUT/gpu_tests.log" || true
    timeout 270 python3 -m benchmarks.throughput --data-dir /tmp/data --epochs 10 --rounds 2 --accelerator gpu \
        --eval-batch-size 10000 --json "$OUT/throughput_gpu.json" 2>&1 | tee "$OUT/throughput_gpu.log" || true
    timeout 110 python3 -m benchmarks.time_to_accuracy --data-dir /tmp/data --seeds 1 --accelerator gpu \
        --project-override cuda_graph=true \
        --json "$OUT/time_to_accuracy_gpu.json" 2>&1 | tee "$OUT/time_to_accuracy_gpu.log" || true
}

case "${1:-}" in
prepare) prepare ;;
run) run ;;
*)
    echo "usage: bash benchmarks/gpu_check.sh prepare|run" >&2
    exit 2
    ;;
esac
