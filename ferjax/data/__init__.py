"""ferjax.data."""
