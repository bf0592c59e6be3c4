"""The single-user store: a DuckDB file fed by per-process journals, value files beside it,
and reads that stay answerable while another process holds the file."""
