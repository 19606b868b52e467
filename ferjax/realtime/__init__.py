"""ferjax.realtime."""
