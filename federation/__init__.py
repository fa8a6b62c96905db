"""The federation hub: enrollment, verified intake, merge, views, archive, hub of hubs."""
