"""stemma.lineage."""
