"""The `liberation` command: the composition root that wires protocol, node and hub."""
