"""Who may see or change whose objects: the principal and the one rule (docs/architecture.md §5).

A :class:`Principal` is built once per request (``podi.auth.principal_of``) or socket
(``podi.realtime.consumers``) and handed to every app's access functions
(``tasks.selectors.task_get_for_principal``, ``wallet.selectors.hold_get_for_principal``,
``media_app.selectors.media_get_for_principal``, …). The rule, for an object owned by a user:

* a user acts for themself; a staff user for anyone;
* a *user-bound* service key (created for a real user) acts only for that user;
* a *service-account* key (its own ``svc-<name>`` account) acts for anyone, but only in the
  areas of its scopes (``tasks:read``, ``wallet:write``, …; ``admin`` implies all);
* a key's scopes always limit the areas it reaches at all.

Objects another principal may not see are reported as not found (404), never as forbidden.

Apps below ``tasks`` must not import it, yet some must know who owns a task (a wallet hold names
one). The owning app registers a lookup in its ``AppConfig.ready()``: ``register_owner_lookup``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from podi.models import ServiceKey, scopes_grant

READ = "read"
WRITE = "write"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user, maybe through a service key.

    ``is_staff`` is the user's staff flag and counts only without a key: a key's powers come from
    its scopes. ``expires_at`` is a socket's JWT expiry (epoch seconds), None otherwise.
    """

    user_id: int
    is_staff: bool = False
    key_id: int | None = None
    scopes: frozenset[str] = frozenset()
    user_bound: bool = False
    expires_at: float | None = None

    @classmethod
    def for_user(cls, user, *, expires_at: float | None = None) -> Principal:
        return cls(user.pk, bool(user.is_staff and user.is_active), expires_at=expires_at)

    @classmethod
    def for_key(cls, key: ServiceKey) -> Principal:
        return cls(
            key.user_id, False, key.pk, frozenset(key.scopes or ()), bool(key.user_bound), None
        )

    @property
    def is_key(self) -> bool:
        return self.key_id is not None

    def has_scope(self, area: str, level: str = READ) -> bool:
        """May this principal use ``area`` at all (users: always; keys: by their scopes)?"""
        return not self.is_key or scopes_grant(self.scopes, f"{area}:{level}")

    def acts_for_anyone(self, area: str, level: str = READ) -> bool:
        """Staff users; service-account keys whose scopes cover ``area:level``."""
        if not self.is_key:
            return self.is_staff
        return not self.user_bound and scopes_grant(self.scopes, f"{area}:{level}")

    @property
    def is_operator(self) -> bool:
        """Staff users and service-account keys with the ``admin`` scope (the admin API)."""
        return self.acts_for_anyone("admin")

    def may_act_for(self, user_id: int | None, area: str, level: str = READ) -> bool:
        """The rule for an object of ``user_id`` in ``area``."""
        if not self.has_scope(area, level):
            return False
        return user_id == self.user_id or self.acts_for_anyone(area, level)


# --- Owners of objects an app below cannot import -----------------------------------------------

# ids → {id: owner user id} for the ids that exist
OwnerLookup = Callable[[list[str]], dict[str, int]]
_owner_lookups: dict[str, OwnerLookup] = {}
_owner_sql: dict[str, str] = {}


def register_owner_lookup(kind: str, lookup: OwnerLookup, *, owner_sql: str = "") -> None:
    """Called from the owning app's ``AppConfig.ready()`` (``tasks`` registers ``"task"``).

    ``owner_sql``: a ``SELECT`` of one column, the owner's user id, of the object whose id is
    its one parameter (``%s``), for a caller that checks ownership inside its own statement."""
    _owner_lookups[kind] = lookup
    if owner_sql:
        _owner_sql[kind] = owner_sql
    else:
        _owner_sql.pop(kind, None)


def owner_sql_of(kind: str) -> str:
    """``owner_sql`` registered for ``kind``, or '' (then ask ``owners_of``)."""
    return _owner_sql.get(kind, "")


def owners_of(kind: str, ids: Iterable[str]) -> dict[str, int]:
    """{id: owner user id} for the ``kind`` objects among ``ids`` that exist."""
    lookup = _owner_lookups.get(kind)
    wanted = [i for i in dict.fromkeys(ids) if isinstance(i, str) and i]
    if lookup is None or not wanted:
        return {}
    return lookup(wanted)
