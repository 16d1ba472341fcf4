"""A local Azure Functions host that keeps the real host's contract."""
