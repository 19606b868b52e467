"""Analyses run by hand for a study or an issue (`python -m ferjax.probes.NAME`); not tasks."""
