"""Mutation testing of the engine core with mutmut (README.md)."""
