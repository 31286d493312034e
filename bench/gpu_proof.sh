#!/usr/bin/env bash
# The proof (bench/searched_vs_handpicked.py) on the full CIFAR-10 training set, on a GPU machine.
#
# Prepared here: .devdata/cifar10.npz (bench/pack_images.py: 45,000 train, the last 500 of each
# class as val/, 5,000 test) and .whl/ (bench/gpu_wheels.sh: this project's wheel and the packages
# the GPU machine lacks, for its Python 3.12). There, from the repository root, both carried:
#     bash bench/gpu_proof.sh [ARGS FOR searched_vs_handpicked.py]
# Everything it writes goes under $OUT (default /tmp/gpu-proof-out): the results file, the docs
# section, the search's front table and the log.
set -uo pipefail
export PYTHONUNBUFFERED=1
out=${OUT:-/tmp/gpu-proof-out}
mkdir -p "$out"
limit=${PROOF_SECONDS:-540}
started=$(date +%s)

# a fresh folder: --target --upgrade leaves files of wheels no longer carried (an old typing_extensions
# left there broke anyio)
rm -rf /tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site RKD_CACHE_DIR=/tmp/rkd-cache
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 bench/pack_images.py unpack "${PROOF_PACK:-.devdata/cifar10.npz}" /tmp/cifar10 || exit 1
echo "setup: $(( $(date +%s) - started )) s"

timeout --signal=INT --kill-after=15 $(( limit - ($(date +%s) - started) )) \
  python3 bench/searched_vs_handpicked.py --data-dir /tmp/cifar10 --work /tmp/proof-work \
    --results "$out/searched_vs_handpicked_cifar10.json" --doc "$out/section.md" --section searched_vs_handpicked_cifar10 \
    "$@" 2>&1 | tee "$out/log.txt"
status=${PIPESTATUS[0]}
cp /tmp/proof-work/search/pareto.csv "$out/" 2>/dev/null
echo "exit $status after $(( $(date +%s) - started )) s"
exit "$status"
