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
        flags = f"{flags} --xla_force_host_platform_device_count={n}".strip()
        if _knows_collective_timeout() and "collective_call_terminate_timeout" not in flags:
            flags += f" --xla_cpu_collective_call_terminate_timeout_seconds={COLLECTIVE_TIMEOUT_S}"
        os.environ["XLA_FLAGS"] = flags
    return max(1, n)


# XLA:CPU aborts the whole process when one device's thread reaches an all-reduce more than 60 s
# after the others (measured 2026-12-01: a balancing-study training on 2 devices died that way at
# epoch 2 while the test suite ran on the same 2 cores). A starved thread is slow, not stuck, so
# the split CPU waits up to an hour.
COLLECTIVE_TIMEOUT_S = 3600


def _knows_collective_timeout() -> bool:
    """Whether the installed jaxlib's XLA has `--xla_cpu_collective_call_terminate_timeout_seconds`
    (verified on 0.10.2; an XLA that lacks a flag in XLA_FLAGS aborts at start, so older ones
    keep their default)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = (int(p) for p in version("jaxlib").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (0, 10)


def accelerator_present() -> tuple[bool, str]:
    """Whether JAX will find a GPU or TPU, and why, without starting a JAX backend (so that
    `split_host_cpu` can still take effect afterwards)."""
    import importlib.util
    import shutil

    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms and not set(platforms.lower().split(",")) - {"cpu", ""}:
        return False, f"JAX_PLATFORMS={platforms}"
    plugins = [p for p in ("jax_cuda13_plugin", "jax_cuda12_plugin", "libtpu")
               if importlib.util.find_spec(p) is not None]
    gpu = os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi") is not None
    tpu = os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio")
    if plugins and (gpu or tpu):
        return True, f"{plugins[0]} installed and a {'GPU' if gpu else 'TPU'} device present"
    if not plugins:
        return False, "no JAX GPU/TPU plugin installed (CPU-only jax)"
    return False, f"{plugins[0]} installed but no GPU/TPU device found"
