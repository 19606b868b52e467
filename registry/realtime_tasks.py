"""Real-time tasks (filled in by the realtime work)."""
