"""Process-wide JAX settings shared by the command-line entry points (`ferjax.run`, `ferjax analyze`,
`python -m ferjax.serve`)."""
from __future__ import annotations

import os

CACHE_ENV = "FERJAX_CACHE_DIR"  # ferjax's own caches (default ~/.cache/ferjax)
DEFAULT_JAX_CACHE = os.path.join(os.environ.get(CACHE_ENV, "~/.cache/ferjax"), "jax")


def enable_jax_cache(path: str) -> None:
    """Turns on JAX's persistent compilation cache in `path` ('' leaves it off)."""
    if path:
        import jax  # noqa: PLC0415

        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def split_host_cpu(num_devices: int | None = None) -> int:
    """Presents the host CPU to XLA as `num_devices` devices (default: one per core), so a
    data-parallel step keeps every core busy: one XLA:CPU device keeps only ~1.5 of 2 cores busy.

    Takes effect only before JAX's CPU backend starts and never overrides an
    `--xla_force_host_platform_device_count` already in XLA_FLAGS. GPU backends are unaffected.
    Returns the device count requested (1 when it leaves the CPU as one device).
    """
    n = num_devices if num_devices is not None else (os.cpu_count() or 1)
    flags = os.environ.get("XLA_FLAGS", "")
    if n > 1 and "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    return max(1, n)
