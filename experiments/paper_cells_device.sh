#!/usr/bin/env bash
# The headline cells that a 3-hour session on 2 CPU cores cannot finish (issue 18: dc_mnist_1
# about 2.9 h, dsa_mnist_1 about 3 h, dm_mnist_1 about 20 h), run on a GPU host in one command of
# under 8 minutes, each with its `paper` preset and protocol unchanged.
#
#   experiments/paper_cells_device.sh --prepare     # here: MNIST into .data/paper_cells (ignored)
#   experiments/paper_cells_device.sh               # on the GPU host, with .data/paper_cells beside
#   experiments/paper_cells_device.sh --smoke       # the same path on the 8x8 digits (seconds, CPU)
#
# $CELLS picks the cells (default dc_mnist_1,dsa_mnist_1,dm_mnist_1, run in that order); $LIMIT_S
# bounds the whole run (default 470 s). The cell in progress stops at its first checkpoint after
# $LIMIT_S less 90 s (`--stop-after`) and later cells do not start; its checkpoint stays in
# .data/paper_cells/runs, so carrying that folder back continues it (`--resume`). Every finished
# cell is written at once to experiments/results/paper_cells.{json,md} with the device it ran on;
# with $OUT set, those two files and the checkpoints are copied there, whatever the exit status.
set -euo pipefail
cd "$(dirname "$0")/.."

root=.data/paper_cells
if [ "${1:-}" = "--prepare" ]; then
    mkdir -p "$root/mnist"
    cp "${DATA_DIR:-../shared/data}"/mnist/*-ubyte.gz "$root/mnist/"
    du -sh "$root"
    exit 0
fi

python="${PYTHON:-python}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && python=.venv/bin/python
limit_s="${LIMIT_S:-470}"
cells="${CELLS:-dc_mnist_1,dsa_mnist_1,dm_mnist_1}"
stop_after=$(( (limit_s - 90) / 60 ))
suffix=""
for arg in "$@"; do [ "$arg" = "--smoke" ] && suffix="_smoke"; done

export XLA_PYTHON_CLIENT_PREALLOCATE=false
"$python" -c 'import jax; print("jax", jax.__version__, jax.devices())'
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true

status=0
timeout --signal=INT --kill-after=20 "$limit_s" "$python" -m experiments.paper_cells --cells "$cells" --resume \
    --data-dir "$root" --runs-dir "$root/runs$suffix" --stop-after "$stop_after" "$@" || status=$?
if [ -n "${OUT:-}" ]; then
    cp experiments/results/paper_cells"$suffix".json experiments/results/paper_cells"$suffix".md "$OUT"/ 2>/dev/null || true
    [ -d "$root/runs$suffix" ] && cp -r "$root/runs$suffix" "$OUT"/ || true
fi
exit "$status"
