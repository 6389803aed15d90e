"""ATAS shared library: configuration, logging, metrics, database, auth, events and the app skeleton."""
