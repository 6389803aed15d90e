"""ATAS query service: dashboard aggregations, cached in Redis."""
