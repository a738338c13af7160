"""What leaves the registry: model cards and Hub folders, reports, OpenLineage events, MLflow."""
