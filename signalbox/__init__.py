"""Signalbox tooling: the CLI, the local Functions host and the demo."""
