"""Consistency checks beyond the schema: architecture rules, hf-disk folders, metric files and
the gate a build runs first (the folder facts a check keeps live in `store/_checkcache.py`)."""
