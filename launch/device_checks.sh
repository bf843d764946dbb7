#!/usr/bin/env bash
# The prepared GPU run for issues 3, 5 and 6: correctness on the device first, then the three
# benchmark tables (attention, train step, decode), each written to $OUT.
#
# On the development machine (once): fetch the Python 3.12 wheels the GPU image lacks into .whl/
#   bash launch/device_checks.sh --fetch-wheels
# On the GPU machine (from the repo root; carry .whl):
#   bash launch/device_checks.sh            # about 6-9 minutes on one H100
#   A3JAX_CHECKS="attention train" bash launch/device_checks.sh   # a subset
set -uo pipefail

WHEELS="grain==0.2.18 array-record==0.8.6 portpicker==1.6.0 ml-collections==1.1.0 tensorboardX==2.6.5 rouge-score==0.1.2 nltk==3.9.2"

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  mkdir -p .whl
  for spec in $WHEELS; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "$spec" \
      || python3 -m pip download -q --no-deps --python-version 3.12 -d .whl "$spec" \
      || { echo "could not fetch $spec"; exit 1; }
  done
  for sdist in .whl/*.tar.gz; do  # pure-Python sdists (rouge-score): build a wheel here
    [[ -e "$sdist" ]] || continue
    python3 -m pip wheel -q --no-deps --no-build-isolation "$sdist" -w .whl && rm -f "$sdist"
  done
  ls -la .whl
  exit 0
fi

OUT=${OUT:-/tmp/a3jax-device-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
A3JAX="python3 -c 'import sys; from a3jax.cli import main; sys.exit(main())'"
run() {  # run NAME TIMEOUT COMMAND...: output to the terminal and $OUT/NAME.txt
  local name=$1 limit=$2; shift 2
  echo "=== $name ($(date -u +%H:%M:%S))"
  timeout "$limit" bash -c "$*" 2>&1 | tee "$OUT/$name.txt"
  echo "=== $name exit ${PIPESTATUS[0]}"
}
python3 - <<'EOF' | tee "$OUT/versions.txt"
import importlib, jax
print("jax", jax.__version__, jax.devices())
for name in ("flax", "optax", "orbax.checkpoint", "grain", "ml_collections", "tensorboardX"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as error:  # noqa: BLE001
        print(name, "MISSING:", error)
EOF
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$OUT/versions.txt"

CHECKS=${A3JAX_CHECKS:-"kernel attention train decode"}
for check in $CHECKS; do
  case $check in
    kernel)     # the Pallas kernel compiled by Triton (not interpreted) against the dense reference
      run kernel 240 "python3 -m pytest -x -q -p no:cacheprovider tests/test_kernels.py tests/test_attention.py" ;;
    attention)  # issue 3: B=2, N=4096, 16 q / 4 kv heads, D=128, bf16, fwd and fwd+bwd
      run attention 240 "$A3JAX bench attention" ;;
    train)      # issue 5: 1B shape, seq 2048, bf16, A3 and causal in one run
      run train 300 "$A3JAX bench train --repeats 5" ;;
    decode)     # issue 6: infill 256 of 1,024 in 64 steps of 4, batch 8, at the 1B shape
      run decode 240 "$A3JAX bench decode --config experiments/llama3_1b.py" ;;
    *) echo "unknown check $check (kernel, attention, train, decode)" ;;
  esac
done
