"""ferjax.eval."""
