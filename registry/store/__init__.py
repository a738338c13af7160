"""The registry on disk: the `Registry` handle, file and YAML boundaries, git trees, and the
derived store under `.stemma/` (query index, snapshot, caches)."""
