"""Peak memory of uncached vs cached generation (README.md)."""
