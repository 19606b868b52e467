"""Registered discriminators."""
