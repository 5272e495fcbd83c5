"""Access-control state without Ray: permissions, auth changes, tokens, codec, snapshots and the login limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from rayconf.actors.auth_guard import LoginLimiter, check_login
from rayconf.errors import AuthenticationFailed, InvalidRequest, PermissionDenied, TooManyLoginAttempts
from rayconf.store import snapshot
from rayconf.store.auth import AuthState
from rayconf.store.auth_tokens import new_password_hash, sign_token, verify_token
from rayconf.store.codec import decode_command, encode_command
from rayconf.store.keys import prefix_end
from rayconf.store.limits import Limits
from rayconf.store.mvcc import MVCC
from rayconf.store.validation import check_command
from rayconf.store.records import (
    AuthChange,
    AuthChangeResponse,
    Command,
    Compact,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRange,
    Put,
    RangeRequest,
    Txn,
)

PASSWORDS = {"root": "root-secret-1", "alice": "alice-secret-2"}


def change(state: MVCC, body: AuthChange, principal: str = "root") -> AuthChangeResponse:
    result = state.execute(Command(body, principal=principal))
    assert isinstance(result, AuthChangeResponse)
    return result


def user_add(state: MVCC, name: str) -> None:
    password_hash, salt = new_password_hash(PASSWORDS.get(name, name + "-password"))
    change(state, AuthChange("user_add", name=name, password_hash=password_hash, salt=salt))


@pytest.fixture
def state() -> MVCC:
    """A store with root, and alice holding role `app` with readwrite on /app/ and read on /shared/x."""
    built = MVCC()
    user_add(built, "root")
    change(built, AuthChange("user_grant_role", name="root", role="root"))
    user_add(built, "alice")
    change(built, AuthChange("role_add", name="app"))
    change(built, AuthChange("role_grant_permission", name="app", key=b"/app/", range_end=prefix_end(b"/app/"),
                             permission="readwrite"))
    change(built, AuthChange("role_grant_permission", name="app", key=b"/shared/x", permission="read"))
    change(built, AuthChange("user_grant_role", name="alice", role="app"))
    change(built, AuthChange("auth_enable", secret=b"s" * 32))
    return built


def test_auth_changes_count_auth_revisions_not_key_revisions(state: MVCC) -> None:
    assert state.revision == 1
    assert state.auth.revision == 8
    assert state.auth.enabled


def test_enable_needs_root_with_root_role() -> None:
    fresh = MVCC()
    with pytest.raises(InvalidRequest, match="root"):
        change(fresh, AuthChange("auth_enable", secret=b"s" * 32))
    user_add(fresh, "root")
    with pytest.raises(InvalidRequest, match="grant-role root root"):
        change(fresh, AuthChange("auth_enable", secret=b"s" * 32))
    assert not fresh.auth.enabled


def test_prefix_permission_covers_only_its_range(state: MVCC) -> None:
    auth = state.auth
    assert auth.allows("alice", "write", b"/app/a", None)
    assert auth.allows("alice", "read", b"/app/", prefix_end(b"/app/"))
    assert not auth.allows("alice", "read", b"/ap", prefix_end(b"/ap"))
    assert not auth.allows("alice", "read", b"/", prefix_end(b"/"))
    assert auth.allows("alice", "read", b"/shared/x", None)
    assert not auth.allows("alice", "write", b"/shared/x", None)
    assert not auth.allows("alice", "read", b"/shared/x2", None)
    assert not auth.allows("nobody", "read", b"/app/a", None)
    assert auth.allows("root", "write", b"/anything", None)


def test_adjacent_permissions_join_to_cover_a_range() -> None:
    auth = AuthState()
    from rayconf.store.auth import Permission, Role, User

    auth.users["bob"] = User("bob", b"h" * 32, b"s" * 16, ("r1", "r2"))
    auth.roles["r1"] = Role("r1", (Permission(b"/a/", b"/a/m", "read"),))
    auth.roles["r2"] = Role("r2", (Permission(b"/a/m", prefix_end(b"/a/"), "readwrite"),))
    assert auth.allows("bob", "read", b"/a/", prefix_end(b"/a/"))
    assert not auth.allows("bob", "write", b"/a/", prefix_end(b"/a/"))


def test_txn_checks_every_compare_and_both_branches(state: MVCC) -> None:
    allowed = Txn(compares=(Compare(b"/app/a", CompareTarget.VERSION, CompareOp.EQUAL, 0),),
                  success=(Put(b"/app/a", b"1"),), failure=(RangeRequest(b"/shared/x"),))
    assert state.execute(Command(allowed, principal="alice")).succeeded  # type: ignore[union-attr]
    denied_cases = [
        Txn(compares=(Compare(b"/other", CompareTarget.VERSION, CompareOp.EQUAL, 0),), success=(Put(b"/app/a", b"2"),)),
        Txn(success=(Put(b"/app/a", b"2"),), failure=(Put(b"/other", b"x"),)),
        Txn(success=(DeleteRange(b"/", prefix_end(b"/")),)),
        Txn(success=(RangeRequest(b"/shared/", prefix_end(b"/shared/")),)),
    ]
    for txn in denied_cases:
        with pytest.raises(PermissionDenied):
            state.execute(Command(txn, principal="alice"))
    assert state.get(b"/app/a").value == b"1"  # type: ignore[union-attr]


def test_admin_actions_need_root(state: MVCC) -> None:
    state.put(b"/app/a", b"1", principal="alice")
    for body in (Compact(2), AuthChange("role_add", name="sneaky"), AuthChange("auth_disable")):
        with pytest.raises(PermissionDenied, match="admin"):
            state.execute(Command(body, principal="alice"))
    assert "sneaky" not in state.auth.roles
    assert state.auth.enabled


def test_unknown_principal_rejected_at_apply(state: MVCC) -> None:
    with pytest.raises(AuthenticationFailed):
        state.put(b"/app/a", b"1", principal="mallory")


def test_token_revoked_by_credential_changes(state: MVCC) -> None:
    for revoke in (
        lambda: change(state, AuthChange("user_passwd", name="alice", password_hash=b"h" * 32, salt=b"s" * 16)),
        lambda: change(state, AuthChange("user_revoke_role", name="alice", role="app")),
        lambda: change(state, AuthChange("user_delete", name="alice")),
    ):
        alice = state.auth.users["alice"]
        token = sign_token(state.auth.secret, "alice", alice.generation, expires_ms=2**62)
        assert verify_token(state.auth, token, now_ms=0).name == "alice"
        revoke()
        with pytest.raises(AuthenticationFailed):
            verify_token(state.auth, token, now_ms=0)


def test_disable_skips_checks_and_enable_rotates_secret(state: MVCC) -> None:
    alice = state.auth.users["alice"]
    token = sign_token(state.auth.secret, "alice", alice.generation, expires_ms=2**62)
    change(state, AuthChange("auth_disable"))
    assert state.put(b"/elsewhere", b"1", principal="anyone").revision == 2
    change(state, AuthChange("auth_enable", secret=b"t" * 32))
    with pytest.raises(AuthenticationFailed, match="signature"):
        verify_token(state.auth, token, now_ms=0)
    with pytest.raises(PermissionDenied):
        state.put(b"/elsewhere", b"2", principal="alice")


def test_root_kept_while_auth_enabled(state: MVCC) -> None:
    with pytest.raises(InvalidRequest, match="cannot be deleted"):
        change(state, AuthChange("user_delete", name="root"))
    with pytest.raises(InvalidRequest, match="cannot be revoked"):
        change(state, AuthChange("user_revoke_role", name="root", role="root"))
    with pytest.raises(InvalidRequest, match="built in"):
        change(state, AuthChange("role_delete", name="root"))
    assert state.auth.is_admin("root")


def test_role_delete_revokes_tokens_of_its_users(state: MVCC) -> None:
    generation = state.auth.users["alice"].generation
    change(state, AuthChange("role_delete", name="app"))
    assert state.auth.users["alice"].roles == ()
    assert state.auth.users["alice"].generation > generation
    assert state.auth.users["root"].roles == ("root",)


def test_token_expiry_forgery_and_garbage(state: MVCC) -> None:
    generation = state.auth.users["alice"].generation
    token = sign_token(state.auth.secret, "alice", generation, expires_ms=1000)
    with pytest.raises(AuthenticationFailed, match="expired"):
        verify_token(state.auth, token, now_ms=1000)
    forged = sign_token(b"x" * 32, "root", state.auth.users["root"].generation, expires_ms=2**62)
    with pytest.raises(AuthenticationFailed, match="signature"):
        verify_token(state.auth, forged, now_ms=0)
    for garbage in ("", "v1.abc", "v1.!!.??", "v2.a.b", "x" * 5000):
        with pytest.raises(AuthenticationFailed) as raised:
            verify_token(state.auth, garbage, now_ms=0)
        assert garbage not in str(raised.value) or not garbage


def test_password_check_and_login_limit(state: MVCC) -> None:
    assert check_login(state.auth, "alice", PASSWORDS["alice"]).name == "alice"
    with pytest.raises(AuthenticationFailed) as wrong:
        check_login(state.auth, "alice", "guess")
    with pytest.raises(AuthenticationFailed) as unknown:
        check_login(state.auth, "nobody", "guess")
    assert "guess" not in str(wrong.value)
    assert str(unknown.value).endswith("unknown user or wrong password")
    limiter = LoginLimiter(free_failures=2, lockout_initial_s=1.0, lockout_max_s=4.0)
    for _ in range(2):
        limiter.check("alice", 100.0)
        limiter.failed("alice", 100.0)
    limiter.check("alice", 100.0)
    limiter.failed("alice", 100.0)
    with pytest.raises(TooManyLoginAttempts) as locked:
        limiter.check("alice", 100.5)
    assert locked.value.retry_after_s == pytest.approx(0.5)
    limiter.check("alice", 101.0)
    limiter.check("bob", 100.5)
    limiter.succeeded("alice")
    limiter.check("alice", 100.0)


def test_auth_change_codec_round_trip() -> None:
    body = AuthChange("role_grant_permission", name="app", key=b"/app/", range_end=b"/app0", permission="read")
    command = Command(body, request_id="r1", principal="root", time_ms=5, note="why")
    assert decode_command(encode_command(command)) == command
    with pytest.raises(InvalidRequest, match="unknown"):
        check_command(Command(AuthChange("make_me_root")), Limits())


def test_invalid_user_add_keeps_state(state: MVCC) -> None:
    before = state.auth.to_bytes()
    with pytest.raises(InvalidRequest, match="scrypt"):
        change(state, AuthChange("user_add", name="carol"))
    with pytest.raises(InvalidRequest, match="user name"):
        change(state, AuthChange("user_add", name="bad name", password_hash=b"h" * 32, salt=b"s" * 16))
    assert state.auth.to_bytes() == before


def test_snapshot_keeps_auth_state(state: MVCC, tmp_path: Path) -> None:
    # A remembered request id of an auth change must not break the snapshot's revision checks.
    change_with_id = Command(AuthChange("role_add", name="late"), request_id="auth-1", principal="root")
    state.execute(change_with_id)
    assert state.execute(change_with_id).duplicate  # type: ignore[union-attr]
    directory = snapshot.save(state, tmp_path)
    loaded = snapshot.load(directory)
    assert loaded.auth.to_bytes() == state.auth.to_bytes()
    assert loaded.auth.allows("alice", "write", b"/app/a", None)
    described = loaded.auth.describe()
    assert set(described["users"]) == {"alice", "root"}
    assert "password_hash" not in repr(described)


def test_repr_hides_credential_material(state: MVCC) -> None:
    alice = state.auth.users["alice"]
    change_record = AuthChange("user_passwd", name="alice", password_hash=b"h" * 32, salt=b"s" * 16)
    for shown in (repr(alice), repr(state.auth), repr(change_record), repr(AuthChange("auth_enable", secret=b"k" * 32))):
        assert repr(alice.password_hash) not in shown
        assert repr(state.auth.secret) not in shown
        assert "hhhh" not in shown
        assert "kkkk" not in shown
