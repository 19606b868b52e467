"""ferjax: a JAX/Flax framework for facial expression recognition.

    import ferjax
    faces = ferjax.analyze("photo.jpg")        # [Face(box, score, landmarks, label, probs)]
    analyzer = ferjax.Analyzer(detector="yunet", model=None)   # models kept loaded
"""
__version__ = "0.1.0"
_LAZY = {"analyze": "ferjax.analyzer", "Analyzer": "ferjax.analyzer", "Face": "ferjax.realtime.faces",
         "ImageError": "ferjax.images"}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    """Imports the public API on first use, so `import ferjax` stays light (no JAX, no OpenCV)."""
    if name in _LAZY:
        import importlib  # noqa: PLC0415

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ferjax' has no attribute {name!r}")
