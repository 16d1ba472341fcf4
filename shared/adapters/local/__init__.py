"""The embedded default: SQLite queues, local jobs, a watched folder, local scoring servers."""
