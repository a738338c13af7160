"""Versions like git: history, GTO tags and stages, NAME@REF, every build in history."""
