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
