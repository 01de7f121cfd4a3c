"""Quality/speed frontier of the cache on the trained proxy models (README.md)."""
