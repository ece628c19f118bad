"""Command-line entry points (thin click wrappers)."""
