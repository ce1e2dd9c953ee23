#!/usr/bin/env bash
# The paper-size benchmarks (issue 14) on a GPU host, in one run of under 8 minutes.
#
#   benchmarks/device_check.sh            # on the GPU host: the papers' sizes
#   benchmarks/device_check.sh tiny       # a dry run of the same path (seconds; tests run it on CPU)
#   benchmarks/device_check.sh paper --only dc_ipc1 dd    # further arguments go to benchmarks.paper
#
# The host has JAX and PyTorch (CUDA) but no network and no tensorflow-datasets: the MNIST images
# travel as .data/bench/mnist.npz (an ignored folder; made here with
# `python -m benchmarks.paper --export-data .data/bench/mnist.npz`); without it the benches use
# random normal images (timing does not depend on pixel values). Every bench writes its part of
# benchmarks/results/paper-sizes-<machine>-<date>.json and .md as soon as it is done, so a run cut
# off by the time limit keeps what it measured; with $OUT set the results are copied there too.
set -euo pipefail
cd "$(dirname "$0")/.."

sizes="${1:-paper}"
shift || true
limit_s="${DEVICE_CHECK_LIMIT_S:-470}"   # 8 minutes, less the start and the copy
python="${PYTHON:-python}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && python=.venv/bin/python
args=(--sizes "$sizes" --out "${RESULTS_DIR:-benchmarks/results}" "$@")
[ -f .data/bench/mnist.npz ] && args+=(--data .data/bench/mnist.npz)

export XLA_PYTHON_CLIENT_PREALLOCATE=false   # leave GPU memory to PyTorch's process too
export JAXDD_CONV="${JAXDD_CONV:-auto}"
"$python" -c 'import jax, torch; print("jax", jax.__version__, jax.devices(), "| torch", torch.__version__, "cuda", torch.cuda.is_available())'
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true

status=0
timeout --signal=INT --kill-after=20 "$limit_s" "$python" -m benchmarks.paper "${args[@]}" || status=$?
if [ -n "${OUT:-}" ]; then
    cp "${RESULTS_DIR:-benchmarks/results}"/paper-sizes-* "$OUT"/ 2>/dev/null || true
fi
exit "$status"
