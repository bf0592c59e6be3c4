"""What users see, read from the store: lists of agents and runs, a cell's progress text and
the timeline's read model. No widget library and no kernel module is imported here, so the
server extension and the command line use these views as the kernel does."""
