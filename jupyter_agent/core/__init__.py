"""The pure core: a run's state and its fold, the model's context window, plans, budgets, stuck
detection and redaction. Nothing here does I/O or imports a layer above it."""
