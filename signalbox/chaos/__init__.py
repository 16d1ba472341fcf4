"""The fault-injection run (``signalbox chaos``): its harness, fake cloud workspace and synthetic model."""
