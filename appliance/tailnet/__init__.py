"""The in-memory tailnet: users, nodes, keys; changed only through store transactions."""
