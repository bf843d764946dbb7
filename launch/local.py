"""Start a P-process a3jax job on this machine, each process with D fake CPU devices.

    python launch/local.py --processes 2 --devices-per-process 4 -- train --workdir=runs/x \
        --config=experiments/tiny.py --config.train.steps=5

Every process runs `python -m a3jax.cli ARGS...` with A3JAX_COORDINATOR / A3JAX_NUM_PROCESSES /
A3JAX_PROCESS_ID set (see a3jax/distributed.py); output lines are prefixed with [pN]. Exits with
the first non-zero exit code, after stopping the other processes.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pump(stream, prefix: str) -> None:
    for line in iter(stream.readline, ""):
        sys.stdout.write(f"{prefix} {line}")
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--devices-per-process", type=int, default=4)
    parser.add_argument("--port", type=int, default=0, help="coordinator port (0 = a free one)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="a3jax arguments, after --")
    args = parser.parse_args(argv)
    a3jax_args = args.args[1:] if args.args[:1] == ["--"] else args.args
    port = args.port or free_port()
    procs, pumps = [], []
    # The caller's XLA flags pass through; the fake device count is this launcher's.
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    flags.append(f"--xla_force_host_platform_device_count={args.devices_per_process}")
    for rank in range(args.processes):
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags),
                   A3JAX_COORDINATOR=f"127.0.0.1:{port}", A3JAX_NUM_PROCESSES=str(args.processes),
                   A3JAX_PROCESS_ID=str(rank))
        proc = subprocess.Popen([sys.executable, "-m", "a3jax.cli", *a3jax_args], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(proc)
        pump = threading.Thread(target=_pump, args=(proc.stdout, f"[p{rank}]"), daemon=True)
        pump.start()
        pumps.append(pump)
    codes = [proc.wait() for proc in procs]
    for pump in pumps:
        pump.join(timeout=5)
    bad = [c for c in codes if c != 0]
    return bad[0] if bad else 0


if __name__ == "__main__":
    sys.exit(main())
