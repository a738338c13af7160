"""Frozen records of specs, manifests and settings, validated at the file boundary."""
