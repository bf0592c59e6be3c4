"""Persistence: the store protocol and records (:mod:`.api`), every verb once in SQL
(:mod:`.sql`), what both backends do with rows (:mod:`.rows`) and before writing them
(:mod:`.writer`), opening a store (:mod:`.open`), and one package per backend
(:mod:`.duckdb`, :mod:`.postgres`)."""
