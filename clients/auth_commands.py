"""The `rayconf auth`, `rayconf user` and `rayconf role` commands.

A new password for `user add` and `user passwd` comes from
`--new-password-file`, else the RAYCONF_NEW_PASSWORD environment variable,
else a prompt on the terminal. It never comes from an argument, because
other users of the machine can read arguments in the process list.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rayconf.clients.cli import print_record
from rayconf.errors import InvalidRequest

AUTH_ACTIONS = ("enable", "disable", "status")
USER_ACTIONS = ("add", "delete", "passwd", "grant-role", "revoke-role", "list", "get", "issue-token")
ROLE_ACTIONS = ("add", "delete", "grant-permission", "revoke-permission", "list", "get")


def add_auth_parsers(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """Register `auth`, `user` and `role` with `add(name, help)` from `add_cluster_parsers`."""
    auth = add("auth", "turn access control on or off, or show whether it is on")
    auth.add_argument("action", choices=AUTH_ACTIONS, help="enable needs the user root with the role root")
    auth.add_argument("--note", default="", help="why the change is made; logged by the replicas")

    user = add("user", "manage users: add, delete, passwd, grant-role, revoke-role, list, get, issue-token")
    user.add_argument("action", choices=USER_ACTIONS)
    user.add_argument("name", nargs="?", help="user name (all actions but list)")
    user.add_argument("role", nargs="?", help="role name, for grant-role and revoke-role")
    user.add_argument("--new-password-file", type=Path,
                      help="for add and passwd: file whose first line is the new password (default: "
                           "$RAYCONF_NEW_PASSWORD, else a prompt)")
    user.add_argument("--ttl", type=float, default=30 * 24 * 3600.0,
                      help="for issue-token: lifetime of the token in seconds (default: 2592000, 30 days)")
    user.add_argument("--note", default="", help="why the change is made; logged by the replicas")

    role = add("role", "manage roles: add, delete, grant-permission, revoke-permission, list, get")
    role.add_argument("action", choices=ROLE_ACTIONS)
    role.add_argument("name", nargs="?", help="role name (all actions but list)")
    role.add_argument("permission_arguments", nargs="*", metavar="ARGUMENT",
                      help="grant-permission: read|write|readwrite KEY; revoke-permission: KEY")
    role.add_argument("--prefix", action="store_true", help="the permission covers every key under KEY")
    role.add_argument("--note", default="", help="why the change is made; logged by the replicas")


def command_auth(arguments: argparse.Namespace) -> int:
    from rayconf.clients.commands import connect

    admin = connect(arguments).auth
    if arguments.action == "status":
        state = admin.status()
        text = f"auth: {'enabled' if state['enabled'] else 'disabled'}   auth revision: {state['auth_revision']}"
        print_record(arguments, state, text)
        return 0
    response = admin.enable(note=arguments.note) if arguments.action == "enable" else \
        admin.disable(note=arguments.note)
    print_record(arguments, {"auth_revision": response.auth_revision},
                 f"auth {arguments.action}d at auth revision {response.auth_revision}")
    return 0


def command_user(arguments: argparse.Namespace) -> int:
    from rayconf.clients.commands import connect

    action = arguments.action
    if action != "list" and not arguments.name:
        raise InvalidRequest(f"`rayconf user {action}` needs a user name")
    if action in ("grant-role", "revoke-role") and not arguments.role:
        raise InvalidRequest(f"`rayconf user {action} NAME ROLE` needs a role name")
    # Read the new password before connecting, so a missing file fails fast.
    new_password = read_new_password(arguments) if action in ("add", "passwd") else ""
    admin = connect(arguments).auth
    if action == "list":
        for name in admin.user_list():
            print_record(arguments, {"name": name}, name)
        return 0
    if action == "get":
        found = admin.user_get(arguments.name)
        print_record(arguments, found, f"{found['name']}  roles: {', '.join(found['roles']) or '-'}")
        return 0
    if action == "issue-token":
        issued = admin.issue_token(arguments.name, arguments.ttl)
        expiry = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(issued["expires_ms"] / 1000))
        # The token is the output, so it goes to standard output and nowhere else.
        print_record(arguments, issued, issued["token"])
        print(f"token of user {issued['user']} expires at {expiry}Z", file=sys.stderr)
        return 0
    changes: dict[str, Callable[[], Any]] = {
        "add": lambda: admin.user_add(arguments.name, new_password, note=arguments.note),
        "delete": lambda: admin.user_delete(arguments.name, note=arguments.note),
        "passwd": lambda: admin.user_passwd(arguments.name, new_password, note=arguments.note),
        "grant-role": lambda: admin.user_grant_role(arguments.name, arguments.role, note=arguments.note),
        "revoke-role": lambda: admin.user_revoke_role(arguments.name, arguments.role, note=arguments.note),
    }
    response = changes[action]()
    print_record(arguments, {"auth_revision": response.auth_revision},
                 f"OK user {action} {arguments.name}: auth revision {response.auth_revision}")
    return 0


def command_role(arguments: argparse.Namespace) -> int:
    from rayconf.clients.commands import connect

    action = arguments.action
    extra = arguments.permission_arguments
    if action != "list" and not arguments.name:
        raise InvalidRequest(f"`rayconf role {action}` needs a role name")
    expected_count = {"grant-permission": 2, "revoke-permission": 1}.get(action, 0)
    if len(extra) != expected_count:
        usage = {"grant-permission": "ROLE read|write|readwrite KEY", "revoke-permission": "ROLE KEY"}
        raise InvalidRequest(f"`rayconf role {action}` takes {usage.get(action, 'ROLE')} [--prefix]; "
                             f"got extra arguments {extra}")
    admin = connect(arguments).auth
    if action == "list":
        for name in admin.role_list():
            print_record(arguments, {"name": name}, name)
        return 0
    if action == "get":
        found = admin.role_get(arguments.name)
        lines = [f"{item['kind']:<10} {item['scope']:<22} {item['key']}" for item in found["permissions"]]
        print_record(arguments, found, "\n".join([found["name"], *lines]))
        return 0
    if action == "grant-permission":
        response = admin.role_grant_permission(arguments.name, extra[1], extra[0], prefix=arguments.prefix,
                                               note=arguments.note)
    elif action == "revoke-permission":
        response = admin.role_revoke_permission(arguments.name, extra[0], prefix=arguments.prefix,
                                                note=arguments.note)
    elif action == "add":
        response = admin.role_add(arguments.name, note=arguments.note)
    else:
        response = admin.role_delete(arguments.name, note=arguments.note)
    print_record(arguments, {"auth_revision": response.auth_revision},
                 f"OK role {action} {arguments.name}: auth revision {response.auth_revision}")
    return 0


def read_new_password(arguments: argparse.Namespace) -> str:
    """Return the new password from --new-password-file, RAYCONF_NEW_PASSWORD or a terminal prompt."""
    path: Path | None = arguments.new_password_file
    if path is not None:
        lines = path.read_text(encoding="utf-8").splitlines()
        if not lines or not lines[0]:
            raise InvalidRequest(f"password file {path} is empty; put the password on its first line")
        return lines[0]
    from_environment = os.environ.get("RAYCONF_NEW_PASSWORD")
    if from_environment:
        return from_environment
    if not sys.stdin.isatty():
        raise InvalidRequest("no new password: give --new-password-file PATH or set RAYCONF_NEW_PASSWORD")
    first = getpass.getpass(f"new password of {arguments.name}: ")
    if first != getpass.getpass("again: "):
        raise InvalidRequest("the two passwords differ; nothing was changed")
    return first
