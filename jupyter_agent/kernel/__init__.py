"""The live kernel: its runtime (claims, background jobs), the runner of a cell, delegation,
``--after``, fork and rewind, the timeline widget, and the magics with their options."""
