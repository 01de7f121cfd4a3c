"""Where a cached generation leaves the uncached one: step, step kind, staleness, block (issue 28, item 4)."""
