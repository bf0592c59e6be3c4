"""The kernel side: the runtime of a kernel, the runner of a cell, delegation, and the magics."""
