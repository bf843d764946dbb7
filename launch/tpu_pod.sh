#!/usr/bin/env bash
# Run a3jax on every host of a TPU VM pod slice. JAX finds the coordinator on TPU pods by itself
# (a3jax/distributed.py), so each host runs the same command.
#   launch/tpu_pod.sh TPU_NAME ZONE [a3jax train args...]
# e.g. launch/tpu_pod.sh my-v5p-128 us-east5-a --config=experiments/llama3_1b.py \
#        --config.mesh.preset=v5p-128 --workdir=gs://bucket/runs/a3-1b
set -euo pipefail
tpu=${1:?usage: tpu_pod.sh TPU_NAME ZONE [a3jax train args...]}
zone=${2:?usage: tpu_pod.sh TPU_NAME ZONE [a3jax train args...]}
shift 2
repo=${A3JAX_REPO:-https://github.com/a3jax/a3jax.git}
args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  set -e
  test -d a3jax || git clone -q $repo a3jax
  cd a3jax && git pull -q
  python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]'
  .venv/bin/a3jax train $args
"
