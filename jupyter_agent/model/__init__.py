"""Model clients: the Chat Completions client and the built-in offline model."""
