"""ferjax: a JAX/Flax framework for facial expression recognition."""
__version__ = "0.1.0"
