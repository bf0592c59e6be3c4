"""The agent loop: one execution of a run, step by step, with compaction."""
