"""Registered generators."""
