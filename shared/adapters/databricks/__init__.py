"""Databricks: Jobs (training) and Model Serving, through databricks-sdk."""
