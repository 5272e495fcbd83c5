"""Access control on a real local Ray cluster: every operation against every kind of caller.

One cluster serves the module. The `world` fixture creates users and roles
with auth disabled, as an operator would, then enables auth. Every password
and token the module creates is recorded, and the last test checks that none
of them reached a log record, a Ray log file or an error message.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import ray

from rayconf.__main__ import main as rayconf_main
from rayconf.actors import cluster
from rayconf.actors.cluster import ClusterSpec, find_replica, find_store
from rayconf.actors.replica_core import ReplicaSettings
from rayconf.actors.watch_hub import find_hub
from rayconf.clients.client import Client
from rayconf.clients.watch_stream import close_streams
from rayconf.errors import AuthenticationFailed, PermissionDenied, RayconfError, TooManyLoginAttempts
from rayconf.store.keys import prefix_end
from rayconf.store.records import Command, Compare, CompareOp, CompareTarget, Put, RangeRequest, Txn

NAMESPACE = "rayconf-auth-test"
PASSWORDS = {
    "root": "root-pw-7f3a91",
    "ro": "ro-pw-5d2c18",
    "wo": "wo-pw-b84e02",
    "other": "other-pw-19fa6c",
    "rw": "rw-pw-c03d77",
    "gone": "gone-pw-6ab210",
    "rev": "rev-pw-e51f93",
    "wp": "wp-pw-0d9c4e",
    "svc": "svc-pw-71b3a8",
    "limited": "limited-pw-2e8f05",
}
WRONG_PASSWORD = "wrong-pw-44c1e9"


@dataclass
class World:
    spec: ClusterSpec
    root: Client
    callers: dict[str, Client]
    compact_revision: int
    # Every password and token of the module, for the leak check.
    secrets: set[str] = field(default_factory=set)
    # Every error message the tests saw.
    error_texts: list[str] = field(default_factory=list)
    log_records: list[str] = field(default_factory=list)


class _Collect(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(self.format(record))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    data = tmp_path_factory.mktemp("rayconf-auth")
    # A small compaction margin, so that a restarted store must load a snapshot.
    spec = dataclasses.replace(cluster.default_spec(str(data), namespace=NAMESPACE, tick_ms=20),
                               settings=ReplicaSettings(compaction_margin_entries=5))
    records: list[str] = []
    handler = _Collect(records)
    rayconf_logger = logging.getLogger("rayconf")
    previous_level = rayconf_logger.level
    rayconf_logger.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    cluster.start_local_ray(spec, num_cpus=2)
    try:
        cluster.up(spec)
        yield build_world(spec, records)
    finally:
        close_streams()
        cluster.down(spec)
        ray.shutdown()
        logging.getLogger().removeHandler(handler)
        rayconf_logger.setLevel(previous_level)


def login_token(spec: ClusterSpec, user: str) -> str:
    token = Client(spec, timeout_s=20.0, user=user, password=PASSWORDS[user]).current_token()
    assert token
    return token


def build_world(spec: ClusterSpec, records: list[str]) -> World:
    root = Client(spec, timeout_s=20.0, user="root", password=PASSWORDS["root"])
    admin = root.auth
    for user, password in PASSWORDS.items():
        admin.user_add(user, password)
    admin.user_grant_role("root", "root")
    for role, permission, prefix in (("reader", "read", "/m/"), ("writer", "write", "/m/"),
                                     ("elsewhere", "readwrite", "/elsewhere/"), ("service", "readwrite", "/svc/")):
        admin.role_add(role)
        admin.role_grant_permission(role, prefix, permission, prefix=True)
    for user, roles in (("ro", ["reader"]), ("wo", ["writer"]), ("other", ["elsewhere"]), ("rw", ["reader", "writer"]),
                        ("gone", ["reader"]), ("rev", ["reader"]), ("wp", ["reader"]), ("svc", ["service"]),
                        ("limited", ["reader"])):
        for role in roles:
            admin.user_grant_role(user, role)
    compact_revision = root.put("/m/a", b"1", note="seed").revision
    assert not admin.status()["enabled"]
    admin.enable(note="matrix test")

    expired = admin.issue_token("rw", ttl_s=1)["token"]
    deleted = login_token(spec, "gone")
    admin.user_delete("gone")
    revoked = login_token(spec, "rev")
    admin.user_revoke_role("rev", "reader")
    time.sleep(1.2)

    callers = {
        "none": Client(spec, timeout_s=20.0),
        "wrong_password": Client(spec, timeout_s=20.0, user="wp", password=WRONG_PASSWORD),
        "expired_token": Client(spec, timeout_s=20.0, token=expired),
        "deleted_user_token": Client(spec, timeout_s=20.0, token=deleted),
        "revoked_role_token": Client(spec, timeout_s=20.0, token=revoked),
        "read_only": Client(spec, timeout_s=20.0, user="ro", password=PASSWORDS["ro"]),
        "write_only": Client(spec, timeout_s=20.0, user="wo", password=PASSWORDS["wo"]),
        "other_prefix": Client(spec, timeout_s=20.0, user="other", password=PASSWORDS["other"]),
        "root": root,
    }
    built = World(spec, root, callers, compact_revision, log_records=records)
    built.secrets.update(PASSWORDS.values())
    built.secrets.update({WRONG_PASSWORD, expired, deleted, revoked})
    return built


def remember_token(world: World, client: Client) -> None:
    token = client.current_token()
    if token:
        world.secrets.add(token)


# --- The matrix. ---

Operation = Callable[[Client, World, str], Any]


def watch_once(client: Client, world: World, case: str) -> None:
    client.watch("/m/", timeout_s=15).close()


def status_shows_auth(client: Client, world: World, case: str) -> None:
    assert client.status()["auth"] == "enabled"


OPERATIONS: dict[str, Operation] = {
    "get": lambda client, world, case: client.get("/m/a"),
    "range": lambda client, world, case: client.range("/m/"),
    "ls": lambda client, world, case: client.ls("/m/"),
    "put": lambda client, world, case: client.put("/m/p", b"v", note=case),
    "delete": lambda client, world, case: client.delete("/m/p", note=case),
    "txn": lambda client, world, case: client.txn(Txn(
        compares=(Compare(b"/m/a", CompareTarget.VERSION, CompareOp.GREATER, 0),),
        success=(Put(b"/m/t", b"x"),))),
    "cas": lambda client, world, case: client.cas("/m/a", b"1", b"1"),
    "history": lambda client, world, case: client.history("/m/a"),
    "watch": watch_once,
    "compact": lambda client, world, case: client.compact(world.compact_revision),
    "user_change": lambda client, world, case: client.auth.user_add(f"new-{case}", f"pw-{case}"),
    "role_change": lambda client, world, case: client.auth.role_add(f"role-{case}"),
    "status": status_shows_auth,
}
READS = {"get", "range", "ls", "history", "watch"}
WRITES = {"put", "delete"}
UNAUTHENTICATED = ("none", "wrong_password", "expired_token", "deleted_user_token", "revoked_role_token")


def expected_outcome(operation: str, caller: str) -> type[RayconfError] | None:
    """Return None when `caller` may run `operation`, else the error type it gets."""
    if operation == "status" or caller == "root":
        return None
    if caller in UNAUTHENTICATED:
        return AuthenticationFailed
    if caller == "read_only" and operation in READS:
        return None
    if caller == "write_only" and operation in WRITES:
        return None
    return PermissionDenied


MATRIX = [(operation, caller) for operation in OPERATIONS
          for caller in ("none", "wrong_password", "expired_token", "deleted_user_token", "revoked_role_token",
                         "read_only", "write_only", "other_prefix", "root")]


@pytest.mark.parametrize(("operation", "caller"), MATRIX, ids=[f"{op}-{caller}" for op, caller in MATRIX])
def test_matrix(world: World, operation: str, caller: str) -> None:
    client = world.callers[caller]
    expected = expected_outcome(operation, caller)
    case = f"{operation}-{caller}"
    if expected is None:
        OPERATIONS[operation](client, world, case)
        if caller not in UNAUTHENTICATED:
            remember_token(world, client)
        return
    with pytest.raises(expected) as raised:
        OPERATIONS[operation](client, world, case)
    world.error_texts.append(f"{type(raised.value).__name__}: {raised.value}")
    if expected is PermissionDenied:
        assert raised.value.user == client.user  # type: ignore[attr-defined]


def test_denied_writes_change_nothing(world: World) -> None:
    kv = world.root.get("/m/a")
    assert kv is not None
    assert kv.value == b"1"
    assert world.root.auth.user_list().count("new-user_change-read_only") == 0
    assert "role-role_change-write_only" not in world.root.auth.role_list()


# --- Propagation, audit, watches, service tokens and logins. ---


def cause_of(call: Callable[[], Any]) -> BaseException | None:
    """Run a Ray call; return the rayconf error it raised, or None when it succeeded."""
    try:
        call()
    except ray.exceptions.RayTaskError as error:
        return error.cause
    return None


def test_permission_change_reaches_every_member(world: World) -> None:
    spec, admin = world.spec, world.root.auth
    admin.role_add("prop")
    admin.role_grant_permission("prop", "/prop/", "read", prefix=True)
    admin.user_add("prop-user", "prop-pw-8e1d20")
    world.secrets.add("prop-pw-8e1d20")
    admin.user_grant_role("prop-user", "prop")
    world.root.put("/prop/x", b"1")
    token = Client(spec, timeout_s=20.0, user="prop-user", password="prop-pw-8e1d20").current_token()
    assert token
    world.secrets.add(token)
    request = RangeRequest(b"/prop/x")

    def read_everywhere() -> dict[str, BaseException | None]:
        outcomes = {}
        for store in spec.stores():
            handle = find_store(spec, store)
            outcomes[store] = cause_of(lambda: ray.get(handle.read.remote(request, "linearizable", 0, None, 10.0,
                                                                          token)))
        for member in spec.members():
            handle = find_replica(spec, member)
            outcomes[member] = cause_of(lambda: ray.get(handle.read.remote(request, "linearizable", token=token)))
        return outcomes

    assert read_everywhere() == {name: None for name in (*spec.stores(), *spec.members())}
    admin.role_revoke_permission("prop", "/prop/", prefix=True)
    denied = read_everywhere()
    for name, outcome in denied.items():
        assert isinstance(outcome, PermissionDenied), f"{name} served a read after the revoke: {outcome!r}"
    watcher = Client(spec, timeout_s=20.0, token=token)
    for data_center in spec.data_centers:
        with pytest.raises(PermissionDenied):
            Client(spec, timeout_s=20.0, token=token, data_center=data_center.name).watch("/prop/", timeout_s=15)
    with pytest.raises(PermissionDenied):
        watcher.get("/prop/x")


def test_hub_history_events_need_read(world: World) -> None:
    hub = find_hub(world.spec, world.spec.data_centers[0].hub_names()[0])
    token = world.callers["read_only"].current_token()
    written = world.root.put("/m/events", b"1").revision
    deadline = time.monotonic() + 15
    while not (events := ray.get(hub.history_events.remote(written, b"/m/", prefix_end(b"/m/"), token))):
        assert time.monotonic() < deadline, "the hub did not apply the write"
        time.sleep(0.05)
    assert [event.kv.key for event in events] == [b"/m/events"]
    everything = cause_of(lambda: ray.get(hub.history_events.remote(written, b"", b"", token)))
    assert isinstance(everything, PermissionDenied)
    anonymous = cause_of(lambda: ray.get(hub.history_events.remote(written, b"/m/", prefix_end(b"/m/"))))
    assert isinstance(anonymous, AuthenticationFailed)


def test_restarted_store_loads_auth_from_snapshot(world: World) -> None:
    spec = world.spec
    store = spec.stores()[0]
    for member in spec.members():
        ray.get(find_replica(spec, member).take_snapshot.remote())
    ray.kill(find_store(spec, store), no_restart=False)
    deadline = time.monotonic() + 60
    while True:
        state = cluster.status(spec)
        restarted = state["stores"][store]
        leader = state["members"][state["leader"]] if state["leader"] else {}
        if restarted.get("health") == "ok" and leader and restarted["applied_index"] >= leader["applied_index"]:
            break
        assert time.monotonic() < deadline, f"store {store} did not come back and catch up: {restarted}"
        time.sleep(0.2)
    assert restarted["snapshots_loaded"] >= 1
    assert restarted["auth_enabled"]
    assert restarted["auth_revision"] == leader["auth_revision"]
    handle = find_store(spec, store)
    request = RangeRequest(b"/m/a")
    reader = world.callers["read_only"].current_token()
    outsider = world.callers["other_prefix"].current_token()
    reply = ray.get(handle.read.remote(request, "serializable", 0, None, 10.0, reader))
    assert reply["response"].kvs[0].value == b"1"
    denied = cause_of(lambda: ray.get(handle.read.remote(request, "serializable", 0, None, 10.0, outsider)))
    assert isinstance(denied, PermissionDenied)


def test_async_client_sends_login_token(world: World) -> None:
    import asyncio

    async def scenario() -> tuple[bytes | None, BaseException | None]:
        client = world.callers["read_only"].aio
        kv = await client.get("/m/a")
        try:
            await client.put("/m/async", b"1")
        except RayconfError as error:
            return (kv.value if kv else None), error
        return (kv.value if kv else None), None

    value, error = asyncio.run(scenario())
    assert value == b"1"
    assert isinstance(error, PermissionDenied)


def test_watch_from_before_enable_resumes_with_token(world: World) -> None:
    admin = world.root.auth
    admin.disable()
    try:
        reader = Client(world.spec, timeout_s=20.0, user="ro", password=PASSWORDS["ro"])
        anonymous = Client(world.spec, timeout_s=20.0)
        with reader.watch("/m/", timeout_s=15) as changes, anonymous.watch("/m/", timeout_s=15) as unchecked:
            admin.enable()
            world.root.put("/elsewhere/x", b"1")
            written = world.root.put("/m/resumed", b"1").revision
            batch = changes.get(15)
            assert batch is not None
            assert (batch.revision, [event.kv.key for event in batch.events]) == (written, [b"/m/resumed"])
            assert [reason for reason, _ in changes.resumes] == ["closed"]
            with pytest.raises(AuthenticationFailed):
                unchecked.get(15)
    finally:
        if not admin.status()["enabled"]:
            admin.enable()
    # Enabling again drew a new secret, so the tokens of the matrix callers are gone; they log in again.
    remember_token(world, reader)


def test_history_names_authenticated_user(world: World) -> None:
    spec = world.spec
    writer = world.callers["write_only"]
    writer.put("/m/audit", b"1", note="rotate the key")
    token = writer.current_token()
    assert token
    spoofed = Command(Txn(success=(Put(b"/m/audit", b"2"),)), request_id="spoof-1", principal="root",
                      time_ms=int(time.time() * 1000), note="claims to be root")
    leader = find_replica(spec, cluster.status(spec)["leader"])
    ray.get(leader.propose.remote(spoofed, token=token))
    entries = world.root.history("/m/audit")
    assert [(entry.change.principal, entry.change.note) for entry in entries if entry.change] == [
        ("wo", "rotate the key"), ("wo", "claims to be root")]


def test_watch_filters_unreadable_keys(world: World) -> None:
    admin = world.root.auth
    admin.role_add("watcher")
    admin.role_grant_permission("watcher", "/w/", "read", prefix=True)
    admin.user_add("watch-user", "watch-pw-3c9a5e")
    world.secrets.add("watch-pw-3c9a5e")
    admin.user_grant_role("watch-user", "watcher")
    user = Client(world.spec, timeout_s=20.0, user="watch-user", password="watch-pw-3c9a5e")
    with user.watch("/w/", timeout_s=15) as changes:
        first = world.root.put("/w/a", b"1").revision
        batch = changes.get(15)
        assert batch is not None
        assert (batch.revision, [event.kv.key for event in batch.events]) == (first, [b"/w/a"])
        admin.role_revoke_permission("watcher", "/w/", prefix=True)
        admin.role_grant_permission("watcher", "/w/b", "read")
        world.root.put("/w/a", b"2")
        last = world.root.put("/w/b", b"1").revision
        batch = changes.get(15)
        assert batch is not None
        assert (batch.revision, [event.kv.key for event in batch.events]) == (last, [b"/w/b"])
    remember_token(world, user)


def test_watch_cancelled_when_token_revoked(world: World) -> None:
    admin = world.root.auth
    admin.role_add("watcher2")
    admin.role_grant_permission("watcher2", "/w2/", "read", prefix=True)
    admin.user_add("watch-user2", "watch2-pw-77ab01")
    world.secrets.add("watch2-pw-77ab01")
    admin.user_grant_role("watch-user2", "watcher2")
    user = Client(world.spec, timeout_s=20.0, user="watch-user2", password="watch2-pw-77ab01")
    with user.watch("/w2/", timeout_s=15) as changes:
        world.root.put("/w2/a", b"1")
        assert changes.get(15) is not None
        admin.user_passwd("watch-user2", "watch2-pw-new-5510ce")
        world.secrets.add("watch2-pw-new-5510ce")
        world.root.put("/w2/a", b"2")
        with pytest.raises(AuthenticationFailed) as raised:
            changes.get(15)
    assert raised.value.user == "watch-user2"
    world.error_texts.append(str(raised.value))


def test_service_token_revoked_by_passwd(world: World) -> None:
    issued = world.root.auth.issue_token("svc", ttl_s=24 * 3600)
    world.secrets.add(issued["token"])
    assert issued["expires_ms"] > time.time() * 1000 + 23 * 3600 * 1000
    service = Client(world.spec, timeout_s=20.0, token=issued["token"])
    service.put("/svc/feature", b"on")
    assert service.get("/svc/feature").value == b"on"  # type: ignore[union-attr]
    world.root.auth.user_passwd("svc", "svc-pw-new-91c0aa")
    world.secrets.add("svc-pw-new-91c0aa")
    with pytest.raises(AuthenticationFailed) as raised:
        service.get("/svc/feature")
    world.error_texts.append(str(raised.value))


def test_failed_logins_rate_limited(world: World) -> None:
    spec = world.spec
    for _ in range(3):
        with pytest.raises(AuthenticationFailed) as raised:
            Client(spec, timeout_s=20.0, user="limited", password=WRONG_PASSWORD).login()
        assert not isinstance(raised.value, TooManyLoginAttempts)
    with pytest.raises(AuthenticationFailed):
        Client(spec, timeout_s=20.0, user="limited", password=WRONG_PASSWORD).login()
    with pytest.raises(TooManyLoginAttempts) as locked:
        Client(spec, timeout_s=20.0, user="limited", password=PASSWORDS["limited"]).login()
    assert 0 < locked.value.retry_after_s <= 1.0
    world.error_texts.append(str(locked.value))
    # Another user is not affected, and the right password works once the lockout ends.
    assert login_token(spec, "ro")
    time.sleep(locked.value.retry_after_s + 0.1)
    assert login_token(spec, "limited")


def test_cli_manages_users_and_roles(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--namespace", NAMESPACE, "--data-dir", world.spec.data_directory, "--timeout", "20"]
    root_password = tmp_path / "root-password"
    root_password.write_text(PASSWORDS["root"] + "\n")
    as_root = base + ["--user", "root", "--password-file", str(root_password)]

    def run(*arguments: str) -> tuple[int, str, str]:
        code = rayconf_main([arguments[0], *arguments[1:]])
        captured = capsys.readouterr()
        world.error_texts.append(captured.err)
        return code, captured.out, captured.err

    monkeypatch.setenv("RAYCONF_NEW_PASSWORD", "cli-pw-6f0b3d")
    world.secrets.add("cli-pw-6f0b3d")
    assert run("user", "add", "cli-user", *as_root)[0] == 0
    assert run("role", "add", "cli-role", *as_root)[0] == 0
    assert run("role", "grant-permission", "cli-role", "readwrite", "/cli/", "--prefix", *as_root)[0] == 0
    assert run("user", "grant-role", "cli-user", "cli-role", *as_root)[0] == 0
    code, out, _ = run("role", "get", "cli-role", *as_root)
    assert code == 0
    assert "readwrite" in out
    code, out, _ = run("user", "get", "cli-user", *as_root)
    assert out.strip() == "cli-user  roles: cli-role"
    assert "cli-user" in run("user", "list", *as_root)[1].split()
    assert run("auth", "status", *base)[1].startswith("auth: enabled")
    assert "auth: enabled" in run("status", *base)[1]

    monkeypatch.setenv("RAYCONF_PASSWORD", "cli-pw-6f0b3d")
    code, out, _ = run("put", "/cli/x", "1", "--note", "from the command line", *base, "--user", "cli-user")
    assert code == 0
    put_revision = out.split()[-1]
    code, _, err = run("put", "/m/x", "1", *base, "--user", "cli-user")
    assert code == 1
    assert "PermissionDenied" in err
    code, out, _ = run("history", "/cli/x", *base, "--user", "cli-user")
    assert "cli-user" in out
    assert "from the command line" in out
    code, out, err = run("watch", "/cli/", "--from-revision", put_revision, "--max-events", "1", *base, "--user", "cli-user")
    assert code == 0, err
    assert "/cli/x" in out
    code, _, err = run("watch", "/m/", "--max-events", "1", *base, "--user", "cli-user")
    assert code == 1
    assert "PermissionDenied" in err
    monkeypatch.delenv("RAYCONF_PASSWORD")

    code, out, _ = run("user", "issue-token", "cli-user", "--ttl", "600", *as_root)
    token = out.strip()
    world.secrets.add(token)
    monkeypatch.setenv("RAYCONF_TOKEN", token)
    assert run("get", "/cli/x", *base)[1].strip() == "1"
    monkeypatch.delenv("RAYCONF_TOKEN")
    code, _, err = run("get", "/cli/x", *base, "--user", "cli-user")
    assert code == 1
    assert "AuthenticationFailed" in err


def test_no_secret_in_logs_or_errors(world: World) -> None:
    """Runs last: scans what the whole module logged and raised."""
    remember_token(world, world.root)
    # Errors of this test too, so the scan has error texts when it runs alone.
    for operation, caller in (("put", "read_only"), ("get", "wrong_password"), ("get", "expired_token")):
        with pytest.raises(RayconfError) as raised:
            OPERATIONS[operation](world.callers[caller], world, "leak-check")
        world.error_texts.append(str(raised.value))
    texts = {"driver log records": "\n".join(world.log_records), "error messages": "\n".join(world.error_texts)}
    session = Path(ray._private.worker._global_node.get_session_dir_path())  # noqa: SLF001
    for path in sorted((session / "logs").rglob("*")):
        if path.is_file():
            texts[str(path)] = path.read_text(errors="replace")
    assert len(texts) > 2, "no Ray log files were found to scan"
    for secret in sorted(world.secrets):
        for source, text in texts.items():
            assert secret not in text, f"a password or token appears in {source}"
