"""Access-control state: users, roles and prefix permissions, applied like any command.

The state is part of the replicated state machine. Every change is an
`AuthChange` command in the Raft log, applied by `apply_auth_change` in log
order on every replica, shard store and watch hub, and saved in snapshots.
So every entry point checks a request against the same rules at the same
applied index. Auth changes are numbered by their own `revision` counter, as
etcd numbers them with its auth revision, because a key revision must carry
at least one key event for the watch window.

Model, after etcd v3:
- A user has a scrypt password hash with a per-user random salt, a set of
  roles, and a `generation`. The generation is the auth revision of the
  user's last credential change (creation, password change, role revoke,
  deletion of one of its roles). A token names the generation it was issued
  at, so a token stops working on the next request after such a change.
- A role has permissions: read, write or readwrite on one key
  (`range_end` None) or on a key range, which is how a prefix is stored.
- The role `root` is built in, has every right, and makes its users admins.
  Admins alone change auth state, compact, and read the user and role lists.
- With auth disabled nothing is checked, as in etcd. `auth_enable` requires
  the user `root` with the role `root`, so someone can always log in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from rayconf.errors import AuthenticationFailed, InvalidRequest, PermissionDenied
from rayconf.store.keys import RANGE_END_OPEN
from rayconf.store.records import (
    AUTH_ACTIONS,
    AuthChange,
    Command,
    Compact,
    DeleteRange,
    Put,
    RangeRequest,
    Txn,
)

ROOT_USER = "root"
ROOT_ROLE = "root"
PERMISSION_KINDS = ("read", "write", "readwrite")
# Letters, digits and `_ . @ -`, like a login name or an e-mail address.
_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
PASSWORD_HASH_BYTES = 32
SALT_BYTES = 16
SECRET_BYTES = 32
AUTH_STATE_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Permission:
    """A right on `key` alone (`range_end` None) or on `[key, range_end)`; `range_end` b"" is open."""

    key: bytes
    range_end: bytes | None
    kind: str

    def grants(self, right: str) -> bool:
        return self.kind == "readwrite" or self.kind == right


@dataclass(frozen=True, slots=True)
class User:
    name: str
    password_hash: bytes = field(repr=False)
    salt: bytes = field(repr=False)
    roles: tuple[str, ...] = ()
    # Auth revision of the last credential change; tokens of an older generation are revoked.
    generation: int = 0


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    permissions: tuple[Permission, ...] = ()


@dataclass(slots=True)
class AuthState:
    """The whole access-control state of one shard."""

    enabled: bool = False
    # Number of auth changes applied; each applied change adds one.
    revision: int = 0
    # HMAC-SHA256 key of tokens, installed by each `auth_enable`.
    secret: bytes = field(default=b"", repr=False)
    users: dict[str, User] = field(default_factory=dict)
    roles: dict[str, Role] = field(default_factory=dict)

    def is_admin(self, user_name: str) -> bool:
        user = self.users.get(user_name)
        return user is not None and ROOT_ROLE in user.roles

    def allows(self, user_name: str, right: str, key: bytes, range_end: bytes | None) -> bool:
        """Return whether `user_name` has `right` on every key of `key` alone or `[key, range_end)`."""
        user = self.users.get(user_name)
        if user is None:
            return False
        if ROOT_ROLE in user.roles:
            return True
        intervals = [
            _interval(permission.key, permission.range_end)
            for role_name in user.roles
            if role_name in self.roles
            for permission in self.roles[role_name].permissions
            if permission.grants(right)
        ]
        return _covers(intervals, _interval(key, range_end))

    def to_bytes(self) -> bytes:
        """Encode the state as msgpack for a snapshot."""
        users = [[u.name, u.password_hash, u.salt, list(u.roles), u.generation] for u in self.users.values()]
        roles = [[r.name, [[p.key, p.range_end, p.kind] for p in r.permissions]] for r in self.roles.values()]
        fields = [AUTH_STATE_FORMAT, self.enabled, self.revision, self.secret, users, roles]
        encoded: bytes = msgpack.packb(fields, use_bin_type=True)
        return encoded

    @classmethod
    def from_bytes(cls, data: bytes) -> AuthState:
        """Decode `to_bytes` output; raises `InvalidRequest` when it is malformed."""
        try:
            format_number, enabled, revision, secret, users, roles = msgpack.unpackb(data, raw=False)
            state = cls(bool(enabled), int(revision), bytes(secret))
            for name, password_hash, salt, user_roles, generation in users:
                state.users[name] = User(name, bytes(password_hash), bytes(salt), tuple(user_roles), int(generation))
            for name, permissions in roles:
                state.roles[name] = Role(name, tuple(Permission(bytes(k), None if e is None else bytes(e), kind)
                                                     for k, e, kind in permissions))
        except (ValueError, TypeError) as error:
            raise InvalidRequest(f"auth state is malformed: {type(error).__name__}: {error}") from error
        if format_number != AUTH_STATE_FORMAT:
            raise InvalidRequest(f"auth state has format {format_number!r}, expected {AUTH_STATE_FORMAT}")
        return state

    def describe(self) -> dict[str, Any]:
        """Return users, roles and permissions without hashes, salts or the secret."""
        return {
            "enabled": self.enabled,
            "auth_revision": self.revision,
            "users": {u.name: {"roles": list(u.roles)} for u in sorted(self.users.values(), key=lambda u: u.name)},
            "roles": {r.name: {"permissions": [describe_permission(p) for p in r.permissions]}
                      for r in sorted(self.roles.values(), key=lambda r: r.name)},
        }


def describe_permission(permission: Permission) -> dict[str, Any]:
    key = permission.key.decode("utf-8", errors="backslashreplace")
    if permission.range_end is None:
        scope = "key"
    elif permission.range_end == RANGE_END_OPEN:
        scope = "from key to the end"
    else:
        scope = "range to " + permission.range_end.decode("utf-8", errors="backslashreplace")
    return {"key": key, "scope": scope, "kind": permission.kind}


# --- Checks of requests. ---


def authorize_command(state: AuthState, command: Command) -> None:
    """Raise unless the principal of `command` may run it; a no-op with auth disabled.

    A txn needs read on every compared key and every range it reads, and
    write on every key and range it puts or deletes, in both branches,
    whichever branch runs. A compaction or an auth change needs an admin.
    """
    if not state.enabled:
        return
    principal = command.principal
    if principal not in state.users:
        raise AuthenticationFailed(f"user {principal!r} does not exist; authenticate as an existing user",
                                   user=principal)
    body = command.body
    if isinstance(body, (Compact, AuthChange)):
        require_admin(state, principal, "compact" if isinstance(body, Compact) else body.action)
        return
    assert isinstance(body, Txn)
    for compare in body.compares:
        require(state, principal, "read", compare.key, None)
    for operation in body.success + body.failure:
        if isinstance(operation, Put):
            require(state, principal, "write", operation.key, None)
        elif isinstance(operation, DeleteRange):
            require(state, principal, "write", operation.key, operation.range_end)
        else:
            assert isinstance(operation, RangeRequest)
            require(state, principal, "read", operation.key, operation.range_end)


def require(state: AuthState, user_name: str, right: str, key: bytes, range_end: bytes | None) -> None:
    """Raise `PermissionDenied` unless `user_name` has `right` on the whole key or range."""
    if state.enabled and not state.allows(user_name, right, key, range_end):
        raise PermissionDenied(
            f"user {user_name!r} has no {right} permission on {_show_range(key, range_end)}; "
            "ask an admin to grant it to one of the user's roles",
            user=user_name, right=right,
        )


def require_admin(state: AuthState, user_name: str, action: str) -> None:
    if state.enabled and not state.is_admin(user_name):
        raise PermissionDenied(f"{action} needs an admin (a user with role {ROOT_ROLE!r}); user "
                               f"{user_name!r} is not one", user=user_name, right="admin")


# --- Applying auth changes. ---


def check_auth_change(change: AuthChange) -> None:
    """Raise `InvalidRequest` if `change` is malformed; runs before the change enters the log."""
    if change.action not in AUTH_ACTIONS:
        raise InvalidRequest(f"auth action {change.action!r} is unknown; use one of {list(AUTH_ACTIONS)}")
    if change.action.startswith("user_"):
        check_name("user", change.name)
    if change.action.startswith("role_"):
        check_name("role", change.name)
    if change.action in ("user_grant_role", "user_revoke_role"):
        check_name("role", change.role)
    if change.action in ("user_add", "user_passwd"):
        if len(change.password_hash) != PASSWORD_HASH_BYTES or len(change.salt) != SALT_BYTES:
            raise InvalidRequest(f"{change.action} needs a {PASSWORD_HASH_BYTES}-byte scrypt hash and a "
                                 f"{SALT_BYTES}-byte salt; build the change with hash_password")
    if change.action == "auth_enable" and change.secret and len(change.secret) != SECRET_BYTES:
        raise InvalidRequest(f"auth_enable secret must be {SECRET_BYTES} bytes")
    if change.action in ("role_grant_permission", "role_revoke_permission"):
        if not change.key:
            raise InvalidRequest("a permission needs a key or a prefix; give one such as /app/")
        if change.range_end is not None and change.range_end != RANGE_END_OPEN and change.range_end <= change.key:
            raise InvalidRequest(f"permission range end {change.range_end!r} is not above its key {change.key!r}")
    if change.action == "role_grant_permission" and change.permission not in PERMISSION_KINDS:
        raise InvalidRequest(f"permission {change.permission!r} is unknown; use one of {list(PERMISSION_KINDS)}")


def check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
        raise InvalidRequest(f"{kind} name {name!r} is invalid; use 1 to 64 letters, digits or '_.@-'")


def apply_auth_change(state: AuthState, change: AuthChange) -> None:
    """Apply `change` to `state`, or raise `InvalidRequest` and leave `state` unchanged."""
    check_auth_change(change)
    generation = state.revision + 1
    action = change.action
    users, roles = state.users, state.roles
    if action == "auth_enable":
        root = users.get(ROOT_USER)
        if root is None or ROOT_ROLE not in root.roles:
            raise InvalidRequest("auth enable needs the user 'root' with the role 'root'; run `rayconf user add "
                                 "root` and `rayconf user grant-role root root` first")
        if not (change.secret or state.secret):
            raise InvalidRequest("auth enable needs a token secret; propose it through a replica")
        state.enabled = True
        state.secret = change.secret or state.secret
    elif action == "auth_disable":
        state.enabled = False
    elif action == "user_add":
        if change.name in users:
            raise InvalidRequest(f"user {change.name!r} already exists; use passwd to change its password")
        users[change.name] = User(change.name, change.password_hash, change.salt, (), generation)
    elif action == "user_delete":
        _user(state, change.name)
        if change.name == ROOT_USER and state.enabled:
            raise InvalidRequest("user 'root' cannot be deleted while auth is enabled; disable auth first")
        del users[change.name]
    elif action == "user_passwd":
        user = _user(state, change.name)
        users[change.name] = replace(user, password_hash=change.password_hash, salt=change.salt,
                                     generation=generation)
    elif action == "user_grant_role":
        user = _user(state, change.name)
        if change.role != ROOT_ROLE:
            _role(state, change.role)
        if change.role not in user.roles:
            users[change.name] = replace(user, roles=tuple(sorted(user.roles + (change.role,))))
    elif action == "user_revoke_role":
        user = _user(state, change.name)
        if change.role not in user.roles:
            raise InvalidRequest(f"user {change.name!r} does not have role {change.role!r}; list its roles with "
                                 f"`rayconf user get {change.name}`")
        if (change.name, change.role) == (ROOT_USER, ROOT_ROLE) and state.enabled:
            raise InvalidRequest("role 'root' cannot be revoked from user 'root' while auth is enabled")
        users[change.name] = replace(user, roles=tuple(r for r in user.roles if r != change.role),
                                     generation=generation)
    elif action == "role_add":
        if change.name == ROOT_ROLE or change.name in roles:
            raise InvalidRequest(f"role {change.name!r} already exists")
        roles[change.name] = Role(change.name)
    elif action == "role_delete":
        if change.name == ROOT_ROLE:
            raise InvalidRequest("role 'root' is built in and cannot be deleted")
        _role(state, change.name)
        del roles[change.name]
        for user in list(users.values()):
            if change.name in user.roles:
                users[user.name] = replace(user, roles=tuple(r for r in user.roles if r != change.name),
                                           generation=generation)
    elif action == "role_grant_permission":
        role = _role_to_change(state, change.name)
        granted = Permission(change.key, change.range_end, change.permission)
        other_permissions = tuple(p for p in role.permissions if (p.key, p.range_end) != (change.key, change.range_end))
        roles[change.name] = replace(role, permissions=other_permissions + (granted,))
    else:
        assert action == "role_revoke_permission"
        role = _role_to_change(state, change.name)
        other_permissions = tuple(p for p in role.permissions if (p.key, p.range_end) != (change.key, change.range_end))
        if len(other_permissions) == len(role.permissions):
            raise InvalidRequest(f"role {change.name!r} has no permission on "
                                 f"{_show_range(change.key, change.range_end)}")
        roles[change.name] = replace(role, permissions=other_permissions)
    state.revision = generation


def _user(state: AuthState, name: str) -> User:
    user = state.users.get(name)
    if user is None:
        raise InvalidRequest(f"user {name!r} does not exist; list users with `rayconf user list`")
    return user


def _role(state: AuthState, name: str) -> Role:
    role = state.roles.get(name)
    if role is None:
        raise InvalidRequest(f"role {name!r} does not exist; list roles with `rayconf role list`")
    return role


def _role_to_change(state: AuthState, name: str) -> Role:
    if name == ROOT_ROLE:
        raise InvalidRequest("role 'root' has every permission built in; grant permissions to another role")
    return _role(state, name)


# --- Key intervals. None as an end means "to the end of the key space". ---


def _interval(key: bytes, range_end: bytes | None) -> tuple[bytes, bytes | None]:
    if range_end is None:
        return key, key + b"\x00"
    return key, None if range_end == RANGE_END_OPEN else range_end


def _covers(intervals: list[tuple[bytes, bytes | None]], requested: tuple[bytes, bytes | None]) -> bool:
    """Return whether the union of `intervals` contains the interval `requested`."""
    reached: bytes | None = requested[0]
    for start, end in sorted(intervals, key=lambda item: item[0]):
        if reached is None:
            return True
        if start > reached:
            break
        if end is None or end > reached:
            reached = end
    if reached is None:
        return True
    return requested[1] is not None and reached >= requested[1]


def _show_range(key: bytes, range_end: bytes | None) -> str:
    shown = key.decode("utf-8", errors="backslashreplace")
    if range_end is None:
        return f"key {shown!r}"
    if range_end == RANGE_END_OPEN:
        return f"every key from {shown!r}"
    return f"range [{shown!r}, {range_end.decode('utf-8', errors='backslashreplace')!r})"
