"""Pure rules, one home each: names, lineage order and parents, status, tasks, class labels,
commit points. They import nothing of stemma but `errors`."""
