"""The production test group: a real profile, its daemon and a dask cluster, on SQLite+ZeroMQ and PostgreSQL+RabbitMQ."""
