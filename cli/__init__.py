"""stemma.cli."""
