"""The community node: ingest through the privacy filter, store, aggregate, noise, sign, publish."""
