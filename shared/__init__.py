"""Signalbox's own code: contracts, domain, handlers, ports, adapters and settings."""
