"""ferjax.train."""
