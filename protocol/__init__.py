"""The contract shared by node, hub and dashboards: events, catalog, snapshots, wire, keys, errors.

Nothing here imports `node`, `federation` or duckdb (a test guards it).
"""
