"""Multi-process start-up: jax.distributed.initialize when the job runs as several processes.

How a process learns it is part of a multi-process job, in order:
  1. explicit settings: A3JAX_COORDINATOR=host:port, A3JAX_NUM_PROCESSES, A3JAX_PROCESS_ID
     (what launch/local.py and the SLURM script set; flags of the same names override them);
  2. a SLURM job step with more than one task (SLURM_NTASKS > 1): JAX reads the SLURM variables;
  3. a TPU VM pod slice with more than one host (TPU_WORKER_HOSTNAMES lists several hosts):
     JAX finds the coordinator itself.
Otherwise the job is single-process and nothing is initialised.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time

import jax

from a3jax.errors import UserError

_log = logging.getLogger("a3jax")


class DistributedError(UserError, RuntimeError):
    """The processes of a job could not find each other."""


def _explicit_settings() -> dict | None:
    coordinator = os.environ.get("A3JAX_COORDINATOR")
    if not coordinator:
        return None
    missing = [k for k in ("A3JAX_NUM_PROCESSES", "A3JAX_PROCESS_ID") if k not in os.environ]
    if missing:
        raise DistributedError(f"A3JAX_COORDINATOR={coordinator} is set but {missing} are not; "
                               "set all three (launch/local.py does)")
    return {"coordinator_address": coordinator, "num_processes": int(os.environ["A3JAX_NUM_PROCESSES"]),
            "process_id": int(os.environ["A3JAX_PROCESS_ID"])}


def detect() -> tuple[str, dict] | None:
    """(how, initialize kwargs) of a multi-process job, or None when single-process."""
    explicit = _explicit_settings()
    if explicit is not None:
        return "explicit", explicit if explicit["num_processes"] > 1 else None
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return "slurm", {}
    if len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return "tpu", {}
    return None


_initialized = False


def _wait_for_port(address: str, timeout_s: float, message: str) -> None:
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise DistributedError(message) from None
            time.sleep(0.2)


def initialize(timeout_s: int = 300) -> None:
    """Joins the multi-process job if there is one; raises DistributedError naming what to check."""
    global _initialized
    found = detect()
    if _initialized or found is None or found[1] is None:
        return
    how, kwargs = found
    if kwargs and os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    message = (f"could not join the {how} job ({kwargs.get('num_processes', '?')} processes, coordinator "
               f"{kwargs.get('coordinator_address', 'found by ' + how)}) within {timeout_s} s")
    hint = ("Check that every process was started with the same coordinator address and process count, "
            "and that the coordinator port is reachable.")
    if kwargs.get("process_id", 0) != 0:
        # JAX aborts the whole process (no Python exception) when the coordinator never answers,
        # so a non-coordinator first checks that the coordinator's port opens in time.
        _wait_for_port(kwargs["coordinator_address"], timeout_s, f"{message}: nobody listens there. {hint}")
    print(f"[a3jax] joining the {how} job as process {kwargs.get('process_id', '?')} of "
          f"{kwargs.get('num_processes', '?')}; JAX aborts after {timeout_s} s if a peer never arrives",
          file=sys.stderr, flush=True)
    try:
        jax.distributed.initialize(initialization_timeout=timeout_s, **kwargs)
    except Exception as error:  # jax raises several types; all mean the same to the user
        raise DistributedError(
            f"{message}: {type(error).__name__}: {str(error).splitlines()[0][:200]}. {hint}") from None
    _initialized = True
    _log.info("joined %s job: process %d of %d, %d local / %d global devices", how, jax.process_index(),
              jax.process_count(), jax.local_device_count(), jax.device_count())
