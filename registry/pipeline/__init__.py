"""The DVC pipeline: dvc.yaml files rendered from the specs, written and checked; dvc.lock;
what `stemma repro` runs."""
