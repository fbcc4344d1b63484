"""Django's PostgreSQL backend with :class:`WarmestFirstPool` as its connection pool
(docs/adr/0035-the-pool-hands-out-its-warmest-connection.md)."""

from __future__ import annotations

import select

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.postgresql import base
from psycopg import OperationalError
from psycopg_pool import ConnectionPool


class WarmestFirstPool(ConnectionPool):
    """psycopg's pool, handing out the idle connection returned most recently instead of the one
    idle longest. psycopg's pool is first in, first out: every idle connection takes turns, so
    each pays the first executions of every statement (parsed and planned each time until it
    is prepared on that connection). Last in, first out keeps the work on the few connections
    that have it prepared; the ones left idle stay at the other end, where the pool's
    shrinking takes the one it closes."""

    def _get_ready_connection(self, timeout: float | None):
        # Called with the pool's lock held. The pool takes from the left and returns to the
        # right: the connection returned last goes to the left first.
        if len(self._pool) > 1:
            self._pool.rotate(1)
        return super()._get_ready_connection(timeout)


def check_idle_connection(conn) -> None:
    """The pool's check at every checkout (``CONN_HEALTH_CHECKS``), without a round trip for a
    healthy connection. An idle connection has nothing to read unless the server wrote to it:
    it does so when it ends the session (a restart, ``pg_terminate_backend``, an idle timeout:
    an error message, then end of file) or for a notice. Only then is the connection asked
    with psycopg's own check (an empty query), which raises when it is gone, and the pool
    opens another. psycopg's check alone costs one round trip per request, actor message and
    finisher job."""
    if conn.closed:
        raise OperationalError("the connection is closed")
    readable, _, _ = select.select([conn.fileno()], [], [], 0)
    if readable:
        ConnectionPool.check_connection(conn)


class DatabaseWrapper(base.DatabaseWrapper):
    @property
    def pool(self):
        """Django 5.2's pool (``OPTIONS["pool"]``), built as a :class:`WarmestFirstPool`."""
        pool_options = self.settings_dict["OPTIONS"].get("pool")
        if self.alias == NO_DB_ALIAS or not pool_options:
            return None
        if self.alias not in self._connection_pools:
            if self.settings_dict.get("CONN_MAX_AGE", 0) != 0:
                raise ImproperlyConfigured("Pooling doesn't support persistent connections.")
            connect_kwargs = self.get_connection_params()
            connect_kwargs["autocommit"] = True  # Django sets the real mode after checkout
            checks = self.settings_dict["CONN_HEALTH_CHECKS"]
            pool = WarmestFirstPool(
                kwargs=connect_kwargs,
                open=False,  # opened by the first checkout, as Django's
                configure=self._configure_connection,
                check=check_idle_connection if checks else None,
                **({} if pool_options is True else pool_options),
            )
            # Two threads may build one each at start-up: the first one stored wins.
            self._connection_pools.setdefault(self.alias, pool)
        return self._connection_pools[self.alias]
