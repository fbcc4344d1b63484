"""PODI's PostgreSQL backend: Django's own, with a connection pool that hands out the connection
returned most recently (docs/adr/0035-the-pool-hands-out-its-warmest-connection.md).

``ENGINE = "podi.db"`` where ``settings`` turns the pool on (PostgreSQL, ``DATABASE_POOL``).
"""
