"""Built-in ferjax components (installed as ``ferjax.components``); each module registers one kind."""
