"""User, role and auth administration through a `Client` (`client.auth`).

Every change is an `AuthChange` command proposed like a write, so it is
replicated, numbered by the auth revision and applied on every replica,
store and hub. Passwords are hashed here, in the caller's process, so only
their scrypt hash and salt leave it. With auth enabled, every call here
needs an admin (a user with the role `root`), except `status`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ray

from rayconf.actors.cluster import find_replica
from rayconf.errors import InvalidRequest, RayconfError, Unavailable
from rayconf.store.auth import PERMISSION_KINDS, check_name
from rayconf.store.auth_tokens import new_password_hash
from rayconf.store.keys import prefix_end
from rayconf.store.records import AuthChange, AuthChangeResponse

if TYPE_CHECKING:
    from rayconf.clients.client import Client


class AuthAdmin:
    """Administration calls of one client; see the module docstring."""

    def __init__(self, client: Client) -> None:
        self.client = client

    # --- Auth on and off. ---

    def enable(self, *, note: str = "") -> AuthChangeResponse:
        """Turn auth on; needs the user `root` with the role `root` (raises `InvalidRequest` otherwise)."""
        return self._change(AuthChange("auth_enable"), note)

    def disable(self, *, note: str = "") -> AuthChangeResponse:
        return self._change(AuthChange("auth_disable"), note)

    def status(self) -> dict[str, Any]:
        """Return {"enabled": bool, "auth_revision": int} as the leader has applied them."""
        leader = self.client.status()
        info = leader["members"].get(leader["leader"], {})
        return {"enabled": bool(info.get("auth_enabled")), "auth_revision": info.get("auth_revision", 0)}

    # --- Users. ---

    def user_add(self, name: str, password: str, *, note: str = "") -> AuthChangeResponse:
        check_name("user", name)
        password_hash, salt = new_password_hash(password)
        return self._change(AuthChange("user_add", name=name, password_hash=password_hash, salt=salt), note)

    def user_delete(self, name: str, *, note: str = "") -> AuthChangeResponse:
        return self._change(AuthChange("user_delete", name=name), note)

    def user_passwd(self, name: str, password: str, *, note: str = "") -> AuthChangeResponse:
        """Set a new password; every token of the user stops working."""
        check_name("user", name)
        password_hash, salt = new_password_hash(password)
        return self._change(AuthChange("user_passwd", name=name, password_hash=password_hash, salt=salt), note)

    def user_grant_role(self, name: str, role: str, *, note: str = "") -> AuthChangeResponse:
        return self._change(AuthChange("user_grant_role", name=name, role=role), note)

    def user_revoke_role(self, name: str, role: str, *, note: str = "") -> AuthChangeResponse:
        """Take a role away; every token of the user stops working."""
        return self._change(AuthChange("user_revoke_role", name=name, role=role), note)

    def user_list(self) -> list[str]:
        return list(self._info()["users"])

    def user_get(self, name: str) -> dict[str, Any]:
        users = self._info()["users"]
        if name not in users:
            raise InvalidRequest(f"user {name!r} does not exist; list users with `rayconf user list`")
        return {"name": name, **users[name]}

    def issue_token(self, name: str, ttl_s: float) -> dict[str, Any]:
        """Return {"token", "expires_ms", "user"}: a token for a service user, valid `ttl_s` seconds.

        It stops working like a login token: when the user is deleted, its
        password changes or one of its roles is revoked.
        """
        issued: dict[str, Any] = self._call("issue_token", self.client.current_token(), name, ttl_s)
        return issued

    # --- Roles. ---

    def role_add(self, name: str, *, note: str = "") -> AuthChangeResponse:
        return self._change(AuthChange("role_add", name=name), note)

    def role_delete(self, name: str, *, note: str = "") -> AuthChangeResponse:
        return self._change(AuthChange("role_delete", name=name), note)

    def role_grant_permission(self, name: str, key: str | bytes, permission: str, *, prefix: bool = False,
                              note: str = "") -> AuthChangeResponse:
        """Grant read, write or readwrite on one key, or with `prefix` on every key under it."""
        if permission not in PERMISSION_KINDS:
            raise InvalidRequest(f"permission {permission!r} is unknown; use one of {list(PERMISSION_KINDS)}")
        raw, range_end = _scope(key, prefix)
        return self._change(AuthChange("role_grant_permission", name=name, key=raw, range_end=range_end,
                                       permission=permission), note)

    def role_revoke_permission(self, name: str, key: str | bytes, *, prefix: bool = False,
                               note: str = "") -> AuthChangeResponse:
        raw, range_end = _scope(key, prefix)
        return self._change(AuthChange("role_revoke_permission", name=name, key=raw, range_end=range_end), note)

    def role_list(self) -> list[str]:
        return list(self._info()["roles"])

    def role_get(self, name: str) -> dict[str, Any]:
        roles = self._info()["roles"]
        if name not in roles:
            raise InvalidRequest(f"role {name!r} does not exist; list roles with `rayconf role list`")
        return {"name": name, **roles[name]}

    # --- Calls. ---

    def _change(self, change: AuthChange, note: str) -> AuthChangeResponse:
        result = self.client._propose(self.client._command(change, note))
        assert isinstance(result, AuthChangeResponse)
        return result

    def _info(self) -> dict[str, Any]:
        info: dict[str, Any] = self._call("auth_info", self.client.current_token())
        return info

    def _call(self, method: str, *arguments: Any) -> Any:
        handle = find_replica(self.client.spec, self.client._find_leader())
        if handle is None:
            raise Unavailable("the leader is not running; retry")
        try:
            return ray.get(getattr(handle, method).remote(*arguments), timeout=self.client.timeout_s)
        except ray.exceptions.RayTaskError as error:
            if isinstance(error.cause, RayconfError):
                raise error.cause from None
            raise


def _scope(key: str | bytes, prefix: bool) -> tuple[bytes, bytes | None]:
    """Return (key, range_end) of a permission on one key or, with `prefix`, on a directory."""
    from rayconf.clients.client import _prefix_key, to_key

    if not prefix:
        return to_key(key), None
    raw = _prefix_key(key)
    return raw, prefix_end(raw)
