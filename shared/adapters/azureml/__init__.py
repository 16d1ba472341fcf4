"""Azure Machine Learning: command jobs and managed online endpoints, through azure-ai-ml."""
