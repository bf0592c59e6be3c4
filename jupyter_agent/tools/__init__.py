"""The tools an agent calls: python, the notebook's ``@tool`` functions, MCP servers, and the
control tools (``update_plan``, ``delegate``, ``read_agent``)."""
