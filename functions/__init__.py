"""Blueprints, one per trigger family. Each function parses, authenticates, calls one handler.

Handlers and contracts are imported inside the function bodies: they pull in pydantic
and the adapters, which the Functions host should not pay for at indexing (cold start).
"""
