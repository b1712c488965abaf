"""API keys (issue 15, ident): ``aralnode apikey create|list|revoke`` (the real CLI),
keys stored hashed, accepted as ``Authorization: Bearer`` and ``X-API-Key`` on gRPC
(the real grpcurl), REST, MCP (the official client) and WebSocket; created,
revoked and expired keys count on a running node without a restart."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from aralnode import Node
from aralnode.access.apikeys import ApiKeyCheck, ApiKeyStore, split_key
from aralnode.cli_apikey import parse_expiry
from aralnode.core.errors import Unauthenticated
from tests.test_grpcurl import GRPCURL, grpcurl
from tests.test_jwt import DOORS, Refused, bearer, call, guarded

ROOT = Path(__file__).resolve().parent.parent


async def cli(*args: str) -> tuple[int, str, str]:
    """``aralnode ARGS`` in a child process (this worktree's package)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aralnode.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(ROOT),
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def create(data_dir: Path, *extra: str) -> str:
    rc, out, err = await cli(
        "apikey", "create", "--data-dir", str(data_dir), "--principal", "ci-bot", *extra
    )
    assert rc == 0, err
    return out.strip()


async def test_create_prints_only_the_key_and_stores_only_its_hash(tmp_path: Path) -> None:
    key = await create(
        tmp_path, "--scopes", "vault:read,other", "--roles", "ops", "--expires", "30d"
    )
    assert len(key.splitlines()) == 1
    parts = split_key(key)
    assert parts is not None
    key_id, secret = parts
    assert len(secret) >= 43  # 32 random bytes, base64url
    path = tmp_path / "apikeys.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    assert secret not in text
    assert key_id in text
    rc, out, _ = await cli("apikey", "list", "--data-dir", str(tmp_path), "--json")
    assert rc == 0
    (listed,) = json.loads(out)
    assert secret not in out
    assert "hash" not in listed
    assert (listed["id"], listed["principal"], listed["kind"]) == (key_id, "ci-bot", "service")
    assert (listed["scopes"], listed["roles"], listed["state"]) == (
        ["other", "vault:read"],
        ["ops"],
        "active",
    )
    assert listed["expires"] == pytest.approx(time.time() + 30 * 86400, abs=120)
    rc, table, _ = await cli("apikey", "list", "--data-dir", str(tmp_path))
    assert rc == 0
    assert key_id in table
    assert secret not in table
    rc, _, err = await cli("apikey", "revoke", "--data-dir", str(tmp_path), key_id)
    assert rc == 0, err
    rc, out, _ = await cli("apikey", "list", "--data-dir", str(tmp_path), "--json")
    assert json.loads(out)[0]["state"] == "revoked"
    rc, _, err = await cli("apikey", "revoke", "--data-dir", str(tmp_path), "0" * 16)
    assert rc == 1
    assert "no API key" in err


def test_expiry_forms() -> None:
    now = 1_000_000.0
    assert parse_expiry("30d", now) == now + 30 * 86400
    assert parse_expiry("12h", now) == now + 12 * 3600
    assert parse_expiry("2100-01-01T00:00:00Z", now) == 4102444800.0
    assert parse_expiry("2100-01-01T00:00:00", now) == 4102444800.0  # UTC when no zone
    for bad in ("soon", "-1d", "1970-01-02"):
        with pytest.raises(ValueError, match="--expires"):
            parse_expiry(bad, now)


def test_the_check_refuses_wrong_expired_revoked_and_malformed_keys(tmp_path: Path) -> None:
    clock = [1000.0]
    store = ApiKeyStore(tmp_path / "keys.json", now=lambda: clock[0])
    check = ApiKeyCheck(tmp_path / "keys.json", now=lambda: clock[0])
    key, record = store.create("svc", scopes=["a"], expires=2000.0)
    who = check.authenticate(key)
    assert (who.caller, who.kind, who.scopes) == ("svc", "service", frozenset({"a"}))
    key_id, secret = key[len("aral_") :].split("_", 1)
    wrong = f"aral_{key_id}_{'A' * len(secret)}"
    for bad, reason in (
        (wrong, "API_KEY_INVALID"),
        ("aral_nothex_" + secret, "API_KEY_INVALID"),
        ("aral_" + "0" * 16 + "_" + secret, "API_KEY_INVALID"),
        ("not-a-key", "API_KEY_INVALID"),
    ):
        with pytest.raises(Unauthenticated) as refused:
            check.authenticate(bad)
        assert refused.value.reason == reason, bad
    clock[0] = 2000.0
    with pytest.raises(Unauthenticated) as expired:
        check.authenticate(key)
    assert expired.value.reason == "API_KEY_EXPIRED"
    clock[0] = 1500.0
    store.revoke(record.id)
    with pytest.raises(Unauthenticated) as revoked:
        check.authenticate(key)
    assert revoked.value.reason == "API_KEY_REVOKED"
    # A file nobody can read admits no key (a revocation must not be missed).
    other, _ = store.create("other", scopes=[])
    assert check.authenticate(other).caller == "other"
    (tmp_path / "keys.json").write_text("{broken")
    with pytest.raises(Unauthenticated):
        check.authenticate(other)


@pytest.mark.parametrize("door", DOORS)
async def test_a_key_works_on_every_door_in_both_headers_and_counts_without_restart(
    door: str, make_node: Callable[..., Node]
) -> None:
    node = make_node(f"keys-{door}", demo=False, http_port=0)
    runs = guarded(node)
    data_dir = node.config.resolved_data_dir
    async with node:
        # Created while the node runs: it is seen at once.
        key = await create(data_dir, "--scopes", "vault:read", "--roles", "ops")
        for headers in (bearer(key), {"x-api-key": key}):
            who = await call(door, node, "vault.whoami", headers)
            assert (who["caller"], who["kind"], who["roles"]) == ("ci-bot", "service", ["ops"])
            assert (await call(door, node, "vault.read", headers))["caller"] == "ci-bot"
        # Two different credentials at once: refused, not guessed at.
        with pytest.raises(Refused) as ambiguous:
            await call(door, node, "vault.whoami", {**bearer(key), "x-api-key": key + "x"})
        assert ambiguous.value.reason == "CREDENTIALS_AMBIGUOUS"
        key_id = key.split("_")[1]
        rc, _, err = await cli("apikey", "revoke", "--data-dir", str(data_dir), key_id)
        assert rc == 0, err
        ran = len(runs)
        with pytest.raises(Refused) as revoked:
            await call(door, node, "vault.whoami", {"x-api-key": key})
        assert revoked.value.reason == "API_KEY_REVOKED"
        expected = {"grpc": grpc.StatusCode.UNAUTHENTICATED, "rest": 401, "ws": 401}
        if door in expected:
            assert revoked.value.status == expected[door]
        assert len(runs) == ran  # the handler never ran for the revoked key


@pytest.mark.skipif(GRPCURL is None, reason="grpcurl not installed")
async def test_grpcurl_calls_with_an_api_key_in_either_header(
    make_node: Callable[..., Node],
) -> None:
    node = make_node("keys-grpcurl", demo=False, http_port=None)
    runs = guarded(node)
    async with node:
        key = await create(node.config.resolved_data_dir, "--scopes", "vault:read")
        body = json.dumps({"call": {"capability": "vault.read"}})
        for header in (f"authorization: Bearer {key}", f"x-api-key: {key}"):
            rc, out, err = await grpcurl(
                "-plaintext", "-H", header, "-d", body, node.address, "aral.v1.AgentNode/Invoke"
            )
            assert rc == 0, err
            assert json.loads(out)["result"]["result"] == {"caller": "ci-bot"}
        # No key: the scope is missing; a wrong key: unauthenticated. Never run.
        rc, _, err = await grpcurl(
            "-plaintext", "-d", body, node.address, "aral.v1.AgentNode/Invoke"
        )
        assert rc != 0
        assert "PermissionDenied" in err
        rc, _, err = await grpcurl(
            "-plaintext", "-H", "x-api-key: aral_0000000000000000_" + "x" * 43, "-d", body,
            node.address, "aral.v1.AgentNode/Invoke",
        )  # fmt: skip
        assert rc != 0
        assert "Unauthenticated" in err
        assert "API_KEY_INVALID" in err
    assert runs == ["ci-bot", "ci-bot"]
