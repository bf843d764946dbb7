#!/usr/bin/env bash
# The prepared GPU run (about 8 minutes on one H100/H200): correctness of every GPU attention backend
# against xla on the device first, then side by side in one run: attention; the 1B train step (A3
# and causal) at batch 4 and 8 with the chunked loss, the largest batch, and the profile's top ops;
# decoding; remat policies and the loss without chunks; the XLA GPU flags off (most wanted first).
# Each table goes to $OUT. tests/test_device_script.py dry-runs every check on a CPU with tiny
# arguments. The whole run keeps within A3JAX_DEADLINE_S seconds (default 560: a device call may
# run 600): each check's time limit is cut to what is left, and a check that would start with
# under a minute left is skipped and named, so a slow check never costs the run its tables.
#
# On the development machine (once): fetch the Python 3.12 wheels the GPU image lacks into .whl/
#   bash launch/device_checks.sh --fetch-wheels
# On the GPU machine (from the repo root; carry .whl):
#   bash launch/device_checks.sh            # about 6-9 minutes on one H100
# A3JAX_<CHECK>_ARGS go after each check's own arguments, and argparse keeps an option's last
# value: a dry run on a CPU shrinks the shapes while every option the device run passes is still
# parsed and used, e.g.
#   A3JAX_TRAIN_ARGS="--config experiments/tiny.py --repeats 2" bash launch/device_checks.sh
#   A3JAX_CHECKS="attention train" bash launch/device_checks.sh   # a subset
set -uo pipefail

# What the GPU image (Python 3.12, jax 0.11.2) lacks: our data/config stack, and tokamax 0.0.17 with
# its import-time needs (xprof is imported by tokamax's benchmarking module; fire/termcolor by xprof).
WHEELS="grain==0.2.18 array-record==0.8.6 portpicker==1.6.0 ml-collections==1.1.0 tensorboardX==2.6.5 \
rouge-score==0.1.2 nltk==3.9.2 \
tokamax==0.0.17 einshape==1.0 qwix==0.1.8 immutabledict==4.3.1 pydantic==2.14.4 pydantic-core==2.50.5 \
annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 xprof==2.24.2 fire==0.7.1 termcolor==3.3.0"

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
    python3 -m pip wheel -q --no-deps "$sdist" -w .whl && rm -f "$sdist"
  done
  # The set must install offline into a Python 3.12 target, as it will on the GPU machine (pip
  # checks Requires-Python against the interpreter it runs on: use one >= 3.12 for the check).
  PY312=""
  for py in python3.12 python3.13 "$HOME/.cache/a3jax-python3.13/bin/python3.13"; do
    # a candidate must run (a pyenv shim for a version not selected exists but fails)
    "$py" -c "import sys; assert sys.version_info >= (3, 12)" >/dev/null 2>&1 && { PY312=$py; break; }
  done
  [[ -n "$PY312" ]] || { echo "no Python >= 3.12 here to check the wheel set (bash ../shared/tools/python313.sh builds one)"; exit 1; }
  rm -rf /tmp/a3jax-wheel-check
  "$PY312" -m pip install -q --no-index --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --target /tmp/a3jax-wheel-check .whl/*.whl \
    && echo "wheel set installs into a Python 3.12 target with --no-index" \
    || { echo "the wheel set does not install offline for Python 3.12"; exit 1; }
  ls -la .whl; du -sh .whl
  exit 0
fi

DEADLINE=$((SECONDS + ${A3JAX_DEADLINE_S:-560}))  # the wheel install counts too
SKIPPED=()
OUT=${OUT:-/tmp/a3jax-device-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [[ "${A3JAX_WHEELS:-1}" == 1 ]] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
A3JAX="python3 -c 'import sys; from a3jax.cli import main; sys.exit(main())'"
run() {  # run NAME TIMEOUT COMMAND...: output to the terminal and $OUT/NAME.txt
  local name=$1 limit=$2; shift 2
  local left=$((DEADLINE - SECONDS))
  if (( left < 60 )); then
    echo "=== $name skipped: ${left} s left of A3JAX_DEADLINE_S" | tee "$OUT/$name.txt"
    SKIPPED+=("$name")
    return
  fi
  (( limit > left )) && limit=$left
  echo "=== $name ($(date -u +%H:%M:%S))"
  timeout "$limit" bash -c "$*" 2>&1 | tee "$OUT/$name.txt"
  echo "=== $name exit ${PIPESTATUS[0]}"
}
python3 - <<'EOF' | tee "$OUT/versions.txt"
import importlib, jax
print("jax", jax.__version__, jax.devices())
for name in ("flax", "optax", "orbax.checkpoint", "grain", "ml_collections", "tensorboardX", "tokamax"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as error:  # noqa: BLE001
        print(name, "MISSING:", error)
EOF
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$OUT/versions.txt"
fi

CHECKS=${A3JAX_CHECKS:-"parity attention train decode settings flags"}
BIG="XLA_PYTHON_CLIENT_MEM_FRACTION=0.95"  # the train step's checks may use nearly all of the card
for check in $CHECKS; do
  case $check in
    parity)     # every GPU backend (cudnn, pallas, tokamax, tokamax_skip) compiled on the device vs xla: values + grads
      run parity 180 "$A3JAX bench parity ${A3JAX_PARITY_ARGS:-}" ;;
    attention)  # B=2, N=4096, 16 q / 4 kv heads, D=128, bf16, fwd and fwd+bwd, all GPU rows
      run attention 240 "$A3JAX bench attention ${A3JAX_ATTN_ARGS:-}" ;;
    train)      # 1B shape, seq 2048, bf16, chunked loss, XLA GPU flags on: A3 and causal at batch 4
                # and 8, the largest batch (measured against the plan), the top ops of a profile
      run train 330 "$BIG $A3JAX bench train --repeats 5 --batch-sizes 4,8 --loss-chunks 2048 --max-batch \
        --profile /tmp/a3jax-profile ${A3JAX_TRAIN_ARGS:-}"
      # the A3 step's trace, flattened into $OUT (only files two folders deep come back)
      find /tmp/a3jax-profile -maxdepth 1 -name 'train_a3.xplane.pb.gz' -size -16M -exec cp {} "$OUT/" \; ;;
    settings)   # A3 at batch 8: remat none / save_attention / dots, and the full logits
      run settings 240 "$BIG $A3JAX bench train --repeats 3 --batch-sizes 8 --variants a3 \
        --remats none,save_attention,dots --loss-chunks 2048 ${A3JAX_SETTINGS_ARGS:-} \
        && $BIG $A3JAX bench train --repeats 3 --batch-sizes 8 --variants a3 --loss-chunks 0 ${A3JAX_SETTINGS_ARGS:-}" ;;
    flags)      # the XLA GPU flags off (a3jax/xla_flags.py): a new process, XLA reads XLA_FLAGS once
      run flags 180 "A3JAX_XLA_GPU_FLAGS=0 $BIG $A3JAX bench train --repeats 5 --batch-sizes 8 --loss-chunks 2048 \
        ${A3JAX_FLAGS_ARGS:-}" ;;
    decode)     # infill 256 of 1,024 in 64 steps of 4, batch 8, at the 1B shape; speculative(4) vs ar
      run decode 240 "$A3JAX bench decode --config experiments/llama3_1b.py --speculative 4 ${A3JAX_DECODE_ARGS:-}" ;;
    *) echo "unknown check $check (parity, attention, train, settings, flags, decode)" ;;
  esac
done
[[ ${#SKIPPED[@]} -eq 0 ]] || echo "skipped for time: ${SKIPPED[*]} (run them in a second call: A3JAX_CHECKS=\"${SKIPPED[*]}\")"
