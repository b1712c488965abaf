"""Every ``aralnode`` failure: with ``--json`` the JSON error object on stderr (one
line, the shape ``status``/``caps``/``call`` give), otherwise one line of text;
never a traceback, never grpc's own log lines. A node out of reach is a closed
loopback port."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ARALNODE = str(Path(sys.executable).parent / "aralnode")
POLICY = str(Path(__file__).resolve().parent.parent / "examples" / "policy.toml")
KEYS = {"code", "message", "reason", "details", "status", "trace_id"}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ARALNODE, *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def closed() -> str:
    """A loopback address nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A file that is no certificate, a data dir that is a file, a bad config."""
    root = tmp_path_factory.mktemp("cli-errors")
    (root / "garbage.pem").write_text("this is not a certificate\n")
    (root / "a-file").write_text("x")
    (root / "bad.toml").write_text("this is = = not toml\n")
    (root / "bad-policy.toml").write_text("[[tripwires]\n")
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (root / "key.pem").write_bytes(pem)  # a key where a certificate should be
    return {
        "garbage": str(root / "garbage.pem"),
        "file": str(root / "a-file"),
        "config": str(root / "bad.toml"),
        "policy": str(root / "bad-policy.toml"),
        "key": str(root / "key.pem"),
        "empty": str(root / "empty-dir"),
        "missing": str(root / "no-such-file"),
    }


def _json_error(out: subprocess.CompletedProcess[str], code: int) -> dict[str, object]:
    assert out.returncode == code, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr  # one line: no grpc log lines around it
    error = json.loads(lines[0])["error"]
    assert set(error) == KEYS, error
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["reason"], str)
    assert error["reason"].isupper()
    return dict(error)


def _one_line(out: subprocess.CompletedProcess[str], code: int) -> str:
    assert out.returncode == code, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith("error: "), out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.endswith("\n"), out.stderr
    return out.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["approvals", "list"],
        ["halts", "list"],
        ["approvals", "approve", "some-id"],
        ["halts", "clear", "alice"],
        ["status"],
        ["peers"],
    ],
)
def test_an_unreachable_node(closed: str, command: list[str]) -> None:
    error = _json_error(cli(*command, "--node", closed, "--json"), 1)
    assert (error["status"], error["reason"]) == ("UNAVAILABLE", "UNAVAILABLE")
    text = _one_line(cli(*command, "--node", closed), 1)
    assert "[UNAVAILABLE]" in text


def test_call_with_params_that_are_not_json(closed: str) -> None:
    error = _json_error(cli("call", "--node", closed, "--json", "demo.echo", "{bad"), 1)
    assert error["status"] == "INVALID_ARGUMENT"
    assert "JSON_PARAMS is not valid JSON" in str(error["message"])
    assert "JSON_PARAMS" in _one_line(cli("call", "--node", closed, "demo.echo", "{bad"), 1)


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--cacert", "missing"], "--cacert {missing}: No such file or directory"),
        (["--cacert", "garbage"], "--cacert {garbage}: not a PEM certificate"),
        (["--cacert", "key"], "--cacert {key}: not a PEM certificate"),
        (["--cert", "garbage", "--key", "key"], "--cert {garbage}: not a PEM certificate"),
    ],
)
def test_tls_files_that_are_not_pem_of_their_kind(
    closed: str, files: dict[str, str], flags: list[str], says: str
) -> None:
    """Refused before grpc sees them: grpc would log its own lines (``E1207 …
    ssl_transport_security.cc … Could not load any root certificate.``)."""
    given = [files.get(f, f) for f in flags]
    expected = says.format(**files)
    error = _json_error(cli("status", "--node", closed, *given, "--json"), 1)
    assert error["message"] == expected
    assert "Errno" not in str(error["message"])
    assert _one_line(cli("status", "--node", closed, *given), 1) == f"error: {expected}\n"
    assert _one_line(cli("approvals", "list", "--node", closed, *given), 1) == (
        f"error: {expected}\n"
    )


def test_keys_show(files: dict[str, str]) -> None:
    error = _json_error(cli("keys", "show", "--data-dir", files["empty"], "--json"), 1)
    assert "no identity in" in str(error["message"])
    error = _json_error(cli("keys", "show", "--data-dir", files["file"], "--json"), 1)
    assert error["message"] == f"--data-dir {files['file']} is not a directory"
    _one_line(cli("keys", "show", "--data-dir", files["file"]), 1)


@pytest.mark.parametrize("command", [["tail"], ["verify"]])
def test_audit_with_no_log(files: dict[str, str], command: list[str]) -> None:
    out = cli("audit", *command, "--data-dir", files["empty"], "--json")
    error = _json_error(out, 2)
    assert (error["status"], error["reason"]) == ("NOT_FOUND", "NO_AUDIT_LOG")
    assert out.stdout == ""
    text = _one_line(cli("audit", *command, "--data-dir", files["empty"]), 2)
    assert text.startswith("error: no audit log in ")


def test_config_check(files: dict[str, str]) -> None:
    error = _json_error(cli("config", "check", "--config", files["config"], "--json"), 2)
    assert error["reason"] == "CONFIG_INVALID"
    problems = error["details"]
    assert isinstance(problems, dict)
    assert problems["problems"][0]["line"] == 1
    error = _json_error(cli("config", "check", "--config", files["missing"], "--json"), 2)
    assert "cannot read it" in str(error["message"])


def test_policy_check_and_explain(files: dict[str, str]) -> None:
    out = cli("policy", "check", files["policy"], "--json")
    error = _json_error(out, 1)
    assert error["reason"] == "POLICY_INVALID"
    assert out.stdout == ""
    assert _one_line(cli("policy", "check", files["policy"]), 1).startswith(
        f"error: {files['policy']}:"
    )
    out = cli("policy", "explain", POLICY, "--capability", "x", "--params", "{")
    assert "--params is not valid JSON" in _one_line(out, 1)


def test_run_with_a_data_dir_that_is_a_file(files: dict[str, str]) -> None:
    out = cli(
        "run", "--data-dir", files["file"], "--discovery", "none",
        "--grpc-port", "0", "--http-port", "-1",
    )  # fmt: skip
    assert _one_line(out, 1) == f"error: --data-dir {files['file']} is not a directory\n"


@pytest.mark.parametrize("interval", ["0", "-5", "0.01", "nan", "inf"])
def test_peers_watch_needs_a_positive_interval(closed: str, interval: str) -> None:
    """Refused at argument parsing (exit 2): a node is never polled in a busy loop."""
    out = cli("peers", "--node", closed, "--watch", "--interval", interval)
    assert out.returncode == 2
    assert "argument --interval" in out.stderr
    assert "Traceback" not in out.stderr
    assert "UNAVAILABLE" not in out.stderr  # (never got as far as dialling)
