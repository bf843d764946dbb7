"""The platform the attention kernels are built for: this machine's, or a lowering target.

On a CPU the kernels run as references (Pallas interpret mode, tokamax's XLA implementation).
`jax.export` can lower a program for a platform the machine lacks; inside `lowering_for("cuda")`
(or "tpu") the kernels are built for that platform instead (Triton, Mosaic GPU, Mosaic TPU), so
an export from a CPU machine really runs their lowerings (tests/test_lowering.py).
"""

from __future__ import annotations

import contextlib
import contextvars

import jax

from a3jax.errors import UserError

_ALIASES = {"cuda": "gpu", "rocm": "gpu", "gpu": "gpu", "tpu": "tpu", "cpu": "cpu"}
_TARGET: contextvars.ContextVar[str | None] = contextvars.ContextVar("a3jax_kernel_platform", default=None)


def kernel_platform() -> str:
    """'cpu', 'gpu' or 'tpu': the platform kernels are built for now."""
    target = _TARGET.get()
    return target if target is not None else jax.default_backend()


@contextlib.contextmanager
def lowering_for(platform: str):
    """Build the kernels for `platform` ('cuda', 'rocm', 'gpu', 'tpu', 'cpu') inside this block.

    The choice is made while tracing, and JAX's trace caches do not know about it: they are
    cleared on entry and exit so a function traced for one platform is never reused for another.
    """
    if platform not in _ALIASES:
        raise UserError(f"lowering platform {platform!r} is not one of {sorted(_ALIASES)}")
    jax.clear_caches()
    token = _TARGET.set(_ALIASES[platform])
    try:
        yield
    finally:
        _TARGET.reset(token)
        jax.clear_caches()
