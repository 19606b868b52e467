"""TFDS builder for FER2013 (array_record files, readable without TensorFlow)."""
from ferjax.data.fer2013_tfds.fer2013 import Fer2013

__all__ = ["Fer2013"]
