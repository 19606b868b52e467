"""What an experiment runs: each task is `(config, workdir) -> summary` (registered by name in
`registry/tasks.py`). The only folder that combines data, train, eval and curation."""
