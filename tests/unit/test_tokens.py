"""Tokens file parsing, token verification, reload, credential identification and client helpers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from admin.errors import AdminError, InvalidInput
from admin.ops.auth import WRITE_METHODS, identify, peer_host
from admin.ops.bearer import bearer_metadata, token_from_env_or_file
from admin.ops.settings import AuthSettings, Scope
from admin.ops.tokens import (
    Denial,
    Principal,
    Rejected,
    TokensFileInvalid,
    TokenStore,
    parse_tokens,
    token_digest,
)
from conveyor.v1 import admin_pb2

PATH = Path("/etc/conveyor/tokens")
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _line(principal: str, scope: str, token: str, expires: str = "") -> str:
    return f"{principal} {scope} {token_digest(token)} {expires}".rstrip()


def _store(*lines: str) -> TokenStore:
    return TokenStore(PATH, parse_tokens("\n".join(lines), path=PATH))


def _invalid(text: str) -> TokensFileInvalid:
    with pytest.raises(TokensFileInvalid) as info:
        parse_tokens(text, path=PATH)
    return info.value


# --- parsing -------------------------------------------------------------------------------------


def test_a_good_file_yields_one_entry_per_token_line() -> None:
    text = "\n".join(
        [
            "# principal scope digest [expires]",
            "",
            _line("alice", "write", "t-alice"),
            "   ",
            _line("dashboards", "read", "t-dash", "2027-01-31") + "   # rotated yearly",
            "\t" + _line("ci@build.example", "read", "t-ci", "2027-01-31T12:00:00+02:00"),
        ]
    )
    entries = parse_tokens(text, path=PATH)
    assert [(e.principal, e.scope, e.line) for e in entries] == [
        ("alice", Scope.WRITE, 3),
        ("dashboards", Scope.READ, 5),
        ("ci@build.example", Scope.READ, 6),
    ]
    assert entries[0].expires is None
    assert entries[0].digest.hex() == token_digest("t-alice")
    assert entries[1].expires == datetime(2027, 1, 31, tzinfo=UTC)  # no zone means UTC
    assert entries[2].expires == datetime(2027, 1, 31, 10, tzinfo=UTC)


def test_digests_may_be_upper_case_hex() -> None:
    (entry,) = parse_tokens(f"bob read {token_digest('t').upper()}", path=PATH)
    assert entry.digest.hex() == token_digest("t")


def test_an_empty_or_comment_only_file_has_no_tokens() -> None:
    assert parse_tokens("", path=PATH) == ()
    assert parse_tokens("# nobody yet\n\n", path=PATH) == ()


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("alice write", "got 2 fields"),
        (_line("alice", "write", "t", "2027-01-01") + " extra", "got 5 fields"),
        (_line("alice", "admin", "t"), "scope 'admin' must be read or write"),
        (_line("alice", "READ", "t"), "must be read or write"),
        (_line("cn:alice", "read", "t"), "principal 'cn:alice' must be"),
        (_line("-alice", "read", "t"), "principal '-alice' must be"),
        (_line("alice", "read", "t", "next-tuesday"), "expiry 'next-tuesday' is not an ISO 8601"),
        ("alice read abc123", "SHA-256 as 64 hex digits"),
        (f"alice read {'g' * 64}", "SHA-256 as 64 hex digits"),
    ],
)
def test_a_malformed_line_is_reported_with_the_file_and_its_line_number(
    line: str, problem: str
) -> None:
    error = _invalid("# header\n" + _line("ok", "read", "fine") + "\n\n" + line + "\n")
    assert error.line == 4
    assert error.path == PATH
    assert error.message.startswith(f"tokens file {PATH}:4: ")
    assert problem in error.message
    assert isinstance(error, AdminError)


def test_a_token_pasted_in_place_of_its_digest_is_not_echoed() -> None:
    error = _invalid("alice write s3cr3t-token-value")
    assert "s3cr3t" not in error.message
    assert "not the token" in error.message


def test_two_lines_with_the_same_digest_are_rejected() -> None:
    error = _invalid("\n".join([_line("alice", "write", "same"), _line("bob", "read", "same")]))
    assert error.line == 2
    assert "same digest as line 1" in error.message


def test_loading_a_missing_file_names_it_without_a_line(tmp_path: Path) -> None:
    with pytest.raises(TokensFileInvalid) as info:
        TokenStore.load(tmp_path / "absent")
    assert info.value.line is None
    assert str(tmp_path / "absent") in info.value.message


# --- verification --------------------------------------------------------------------------------


def test_the_right_token_authenticates_its_principal_with_its_scope() -> None:
    store = _store(_line("alice", "write", "t-alice"), _line("bob", "read", "t-bob"))
    assert store.authenticate("t-alice", now=NOW) == Principal("alice", Scope.WRITE)
    assert store.authenticate("t-bob", now=NOW) == Principal("bob", Scope.READ)


@pytest.mark.parametrize(
    "token", ["t-alicE", "t-alice ", "", "x" * 10_000, token_digest("t-alice")]
)
def test_a_wrong_token_is_unknown(token: str) -> None:
    store = _store(_line("alice", "write", "t-alice"))
    assert store.authenticate(token, now=NOW) is None
    assert store.verify(token, now=NOW) == Rejected(Denial.UNKNOWN)


def test_an_expired_token_is_rejected_with_its_own_reason_and_principal() -> None:
    store = _store(_line("alice", "write", "t-alice", "2026-06-01T00:00:00Z"))
    assert store.verify("t-alice", now=NOW) == Rejected(Denial.EXPIRED, principal="alice")
    assert store.authenticate("t-alice", now=NOW) is None
    before = NOW - timedelta(seconds=1)
    assert store.authenticate("t-alice", now=before) == Principal("alice", Scope.WRITE)


def test_write_scope_includes_read_and_read_does_not_include_write() -> None:
    assert Scope.WRITE.includes(Scope.READ)
    assert Scope.WRITE.includes(Scope.WRITE)
    assert Scope.READ.includes(Scope.READ)
    assert not Scope.READ.includes(Scope.WRITE)


def test_the_write_methods_are_methods_of_the_admin_service() -> None:
    service = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
    paths = {f"/{service.full_name}/{m.name}" for m in service.methods}
    assert paths >= WRITE_METHODS
    assert {p.rsplit("/", 1)[1] for p in WRITE_METHODS} == {
        "ReprocessDeadLetters",
        "ResolveDeadLetters",
    }


# --- reload --------------------------------------------------------------------------------------


def test_reload_picks_up_new_tokens_and_drops_removed_ones(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(_line("alice", "write", "old") + "\n")
    store = TokenStore.load(path)
    path.write_text(_line("alice", "write", "new") + "\n")
    assert store.reload()
    assert store.authenticate("new") == Principal("alice", Scope.WRITE)
    assert store.authenticate("old") is None


@pytest.mark.parametrize("bad", ["alice write", None])
def test_reload_of_a_bad_or_missing_file_keeps_the_previous_tokens(
    tmp_path: Path, bad: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens"
    path.write_text(_line("alice", "write", "t-alice") + "\n")
    store = TokenStore.load(path)
    if bad is None:
        path.unlink()
    else:
        path.write_text(_line("bob", "read", "t-bob") + "\n" + bad + "\n")
    assert not store.reload()
    assert store.authenticate("t-alice") == Principal("alice", Scope.WRITE)
    assert store.authenticate("t-bob") is None
    assert str(path) in caplog.text
    assert "keeping the 1 tokens" in caplog.text


# --- identifying a call's credentials ------------------------------------------------------------


def _identify(
    *metadata: tuple[str, str | bytes],
    cn: bytes | None = None,
    scopes: dict[str, Scope] | None = None,
) -> Principal | Rejected:
    store = _store(_line("alice", "write", "t-alice"), _line("old", "read", "t-old", "2000-01-01"))
    auth_context = {"x509_common_name": [cn]} if cn is not None else {}
    return identify(metadata, auth_context, store=store, mtls_scopes=scopes or {}, now=NOW)


def test_a_bearer_token_in_the_metadata_identifies_its_principal() -> None:
    expected = Principal("alice", Scope.WRITE)
    assert _identify(*bearer_metadata("t-alice")) == expected
    assert _identify(("authorization", "bearer t-alice")) == expected
    assert _identify(("user-agent", "x"), ("authorization", "Bearer   t-alice  ")) == expected


def test_no_credential_is_missing() -> None:
    assert _identify() == Rejected(Denial.MISSING)
    assert _identify(("user-agent", "grpc-python")) == Rejected(Denial.MISSING)


@pytest.mark.parametrize(
    "metadata",
    [
        (("authorization", "t-alice"),),
        (("authorization", "Basic dDphbGljZQ=="),),
        (("authorization", "Bearer"),),
        (("authorization", "Bearer "),),
        (("authorization", "Bearer t-alice extra"),),
        (("authorization", "Bearer t-alice"), ("authorization", "Bearer t-alice")),
        (("authorization", b"Bearer t-alice"),),
    ],
)
def test_a_malformed_authorization_header_is_malformed(
    metadata: tuple[tuple[str, str | bytes], ...],
) -> None:
    assert _identify(*metadata) == Rejected(Denial.MALFORMED)


def test_unknown_and_expired_tokens_are_told_apart() -> None:
    assert _identify(*bearer_metadata("nope")) == Rejected(Denial.UNKNOWN)
    assert _identify(*bearer_metadata("t-old")) == Rejected(Denial.EXPIRED, principal="old")


def test_without_a_tokens_file_every_bearer_token_is_unknown() -> None:
    outcome = identify(bearer_metadata("t-alice"), {}, store=None, mtls_scopes={})
    assert outcome == Rejected(Denial.UNKNOWN)


def test_a_verified_client_certificate_identifies_its_common_name_with_its_scope() -> None:
    scopes = {"ops-console": Scope.WRITE}
    assert _identify(cn=b"ops-console", scopes=scopes) == Principal("cn:ops-console", Scope.WRITE)
    assert _identify(cn=b"grafana", scopes=scopes) == Principal("cn:grafana", Scope.READ)


def test_a_bad_bearer_token_is_not_rescued_by_a_client_certificate() -> None:
    outcome = _identify(*bearer_metadata("nope"), cn=b"ops-console")
    assert outcome == Rejected(Denial.UNKNOWN)


# --- settings and client helpers -----------------------------------------------------------------


def test_settings_normalise_mtls_scopes_and_reject_unknown_ones() -> None:
    settings = AuthSettings(mtls_scopes={"ops": "write"})  # type: ignore[dict-item]
    assert settings.mtls_scopes == {"ops": Scope.WRITE}
    with pytest.raises(InvalidInput, match="'admin' for 'ops' must be read or write"):
        AuthSettings(mtls_scopes={"ops": "admin"})  # type: ignore[dict-item]
    with pytest.raises(InvalidInput, match="common name"):
        AuthSettings(mtls_scopes={"": Scope.READ})


def test_settings_refuse_unauthenticated_access_alongside_a_tokens_file() -> None:
    with pytest.raises(InvalidInput, match="set only one"):
        AuthSettings(tokens_file=PATH, allow_unauthenticated=True)


def test_a_client_token_comes_from_the_file_when_given_else_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONVEYOR_ADMIN_TOKEN", raising=False)
    assert token_from_env_or_file(None) is None
    monkeypatch.setenv("CONVEYOR_ADMIN_TOKEN", "  from-env\n")
    assert token_from_env_or_file(None) == "from-env"
    path = tmp_path / "token"
    path.write_text("from-file\n")
    assert token_from_env_or_file(str(path)) == "from-file"


def test_an_unreadable_or_empty_client_token_file_is_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot read token file"):
        token_from_env_or_file(str(tmp_path / "absent"))
    (tmp_path / "empty").write_text(" \n")
    with pytest.raises(InvalidInput, match="is empty"):
        token_from_env_or_file(str(tmp_path / "empty"))


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:127.0.0.1:53211", "ipv4:127.0.0.1"),
        ("ipv6:[::1]:53211", "ipv6:[::1]"),
        ("unix:/run/conveyor.sock", "unix:/run/conveyor.sock"),
    ],
)
def test_the_rate_limit_source_is_the_peer_without_its_port(peer: str, host: str) -> None:
    assert peer_host(peer) == host
