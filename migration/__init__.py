"""stemma.migration."""
