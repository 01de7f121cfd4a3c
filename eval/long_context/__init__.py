"""Long-context quality study (issue 28): the kv-retrieval task, its fine-tune + frontier run, paired statistics."""
