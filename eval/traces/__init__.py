"""Decoding traces on the trained proxy models, and their extension to longer generations (README.md)."""
