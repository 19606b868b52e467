"""Built-in ferjax experiments (installed as ``ferjax.experiments``); one module per experiment."""
