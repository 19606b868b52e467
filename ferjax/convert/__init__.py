"""ferjax.convert."""
