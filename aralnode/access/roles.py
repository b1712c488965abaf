"""Roles to scopes: the node's role map, as the authenticate stage applies it.

An authenticator names a caller's roles (a token's claim, an API key's record); the
stage turns them into scopes once per call with a ``RoleMap``: the caller's own
scopes, the scopes of each role it holds that the node defines, and the scopes of
its implicit role (``anonymous`` for a caller nobody identified, ``authenticated``
for every identified one). A role the node does not define grants nothing.

The union for a set of roles is worked out once and kept (an LRU bounded by
``NodeConfig.role_cache_size``): callers name their roles, so the sets are theirs
to vary and the table must not grow with them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

from aralnode.service.auth import (
    DEVELOPMENT_SCOPES,
    Authenticated,
    ImplicitRoles,
)

ANONYMOUS_ROLE = "anonymous"
AUTHENTICATED_ROLE = "authenticated"
_NONE: frozenset[str] = frozenset()


class RoleMap(ImplicitRoles):
    """The configured roles and the two implicit ones (see the module docstring)."""

    __slots__ = ("_cache", "cache_size", "roles")

    def __init__(
        self,
        roles: Mapping[str, frozenset[str]] | None = None,
        *,
        deny_by_default: bool = False,
        cache_size: int = 1024,
    ) -> None:
        """Args:
        roles: Role name -> scopes (``NodeConfig.roles``).
        deny_by_default: The implicit roles hold nothing unless ``roles`` names
            them (otherwise ``agent:read`` and ``agent:invoke``).
        cache_size: Sets of roles whose union is kept.
        """
        self.roles = {name: frozenset(scopes) for name, scopes in (roles or {}).items()}
        default = _NONE if deny_by_default else DEVELOPMENT_SCOPES
        super().__init__(
            self.roles.get(ANONYMOUS_ROLE, default), self.roles.get(AUTHENTICATED_ROLE, default)
        )
        self.cache_size = max(1, cache_size)
        self._cache: OrderedDict[frozenset[str], frozenset[str]] = OrderedDict()

    def expand(self, roles: frozenset[str]) -> frozenset[str]:
        """The union of the scopes of ``roles`` (unknown ones grant nothing)."""
        cache = self._cache
        found = cache.get(roles)
        if found is not None:
            cache.move_to_end(roles)
            return found
        defined = self.roles
        union = frozenset().union(*(defined.get(role, _NONE) for role in roles))
        cache[roles] = union
        if len(cache) > self.cache_size:
            cache.popitem(last=False)
        return union

    def scopes(self, who: Authenticated) -> frozenset[str]:
        """``who``'s scopes, its roles' and its implicit role's."""
        implicit = self.implicit(who)
        if not who.roles:
            return who.scopes | implicit if who.scopes else implicit
        return who.scopes | implicit | self.expand(who.roles)

    @property
    def cached(self) -> int:
        """Sets of roles whose union is kept now."""
        return len(self._cache)


__all__ = ["ANONYMOUS_ROLE", "AUTHENTICATED_ROLE", "RoleMap"]
