"""Consistency checks beyond the schema: folder facts, architecture rules, hf-disk folders,
metric files and the gate a build runs first."""
