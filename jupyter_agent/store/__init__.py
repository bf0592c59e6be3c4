"""Persistence: the store protocol and records (:mod:`.api`), the rows both backends share
(:mod:`.rows`), and one package per backend (:mod:`.duckdb`, :mod:`.postgres`)."""
