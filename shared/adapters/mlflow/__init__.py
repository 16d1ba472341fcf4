"""MLflow: the model registry (local server, Databricks, Unity Catalog, Azure ML) and the evaluator."""
