"""The team store: PostgreSQL with row-level security, advisory locks and admin SQL."""
