"""The `aralnode` command as users and scripts run it: a real node process."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aralnode.cli import build_parser, run_config
from aralnode.store.audit import read_records
from tests.conftest import DEMO

ARALNODE = str(Path(sys.executable).parent / "aralnode")


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ARALNODE, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def node_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data_dir = tmp_path_factory.mktemp("cli-node")
    proc = subprocess.Popen(
        [
            ARALNODE,
            "run",
            "--name",
            "cli-demo",
            "--grpc-port",
            "0",
            "--http-port",
            "-1",
            "--discovery",
            "none",
            "--data-dir",
            str(data_dir),
            "--load",
            DEMO,
            "--audit",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"serving gRPC on (\S+)", line)
    assert match, (
        f"node did not start: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
    )
    try:
        yield match.group(1), data_dir
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "stopping: in-flight calls have up to 5 s to finish" in err


def test_call_prints_result(node_process: tuple[str, Path]) -> None:
    address, _ = node_process
    out = cli("call", "--node", address, "demo.add", '{"a": 2, "b": 40}')
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "42"  # an integral result prints as an int


def test_a_refused_call_names_its_trace_and_speaks_json_when_asked(
    node_process: tuple[str, Path],
) -> None:
    address, data_dir = node_process
    out = cli("call", "--node", address, "demo.nope", "{}")
    assert out.returncode == 1
    text = re.fullmatch(
        r"error: no capability 'demo.nope' on node \S+ \[NOT_FOUND CAPABILITY_NOT_FOUND\] "
        r"\(trace ([0-9a-f]{32})\)\n",
        out.stderr,
    )
    assert text, out.stderr
    out = cli("call", "--node", address, "--json", "demo.nope", "{}")
    assert out.returncode == 1
    assert out.stdout == ""
    error = json.loads(out.stderr)["error"]
    assert (error["code"], error["status"], error["reason"]) == (
        "not_found", "NOT_FOUND", "CAPABILITY_NOT_FOUND",
    )  # fmt: skip
    assert error["details"] == {"capability": "demo.nope"}
    # The trace named is the one the node recorded the refusal under.
    recorded = {r.trace_id for _, r in read_records(data_dir / "audit") if r.action == "demo.nope"}
    assert {text.group(1), error["trace_id"]} <= recorded


def test_call_json(node_process: tuple[str, Path]) -> None:
    address, _ = node_process
    out = cli("call", "--node", address, "--json", "demo.echo", '{"text": "x", "times": 2}')
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["result"] == {"text": "x", "echo": ["x", "x"]}
    assert doc["decision"] == "ok"
    assert doc["trace_id"]


def test_caps_table_and_json(node_process: tuple[str, Path]) -> None:
    address, _ = node_process
    table = cli("caps", "--node", address)
    assert table.returncode == 0, table.stderr
    assert "CAPABILITY" in table.stdout
    assert "demo.echo" in table.stdout
    doc = json.loads(cli("caps", "--node", address, "--json").stdout)
    by_id = {c["id"]: c for c in doc["capabilities"]}
    assert by_id["demo.echo"]["input_schema"]["properties"]["text"]["type"] == "string"
    assert by_id["demo.echo"]["risk"] == "RISK_CATEGORY_READ_ONLY"


def test_status_json(node_process: tuple[str, Path]) -> None:
    address, _ = node_process
    doc = json.loads(cli("status", "--node", address, "--json").stdout)
    assert doc["name"] == "cli-demo"
    assert doc["state"] == "SERVING"
    assert doc["capability_count"] >= 4
    assert doc["peer_count"] == 0  # zero fields are printed, not left out


def test_keys_show_matches_running_node(node_process: tuple[str, Path]) -> None:
    address, data_dir = node_process
    status = json.loads(cli("status", "--node", address, "--json").stdout)
    keys = json.loads(cli("keys", "show", "--data-dir", str(data_dir), "--json").stdout)
    assert keys["node_id"] == status["node_id"]
    assert keys["algorithm"] == "ES256"
    assert oct((data_dir / "identity.pem").stat().st_mode & 0o777) == "0o600"


def test_peers_json_empty(node_process: tuple[str, Path]) -> None:
    address, _ = node_process
    out = cli("peers", "--node", address, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("call", "demo.nope"), "NOT_FOUND"),
        (("call", "demo.echo", "{bad json"), "not valid JSON"),
        (("call", "demo.echo", "[1, 2]"), "must be a JSON object"),
        (("call", "demo.echo", '{"times": 1}'), "INVALID_ARGUMENT"),
    ],
)
def test_errors_go_to_stderr_with_exit_1(
    node_process: tuple[str, Path], args: tuple[str, ...], needle: str
) -> None:
    address, _ = node_process
    out = cli(args[0], "--node", address, *args[1:])
    assert out.returncode == 1
    assert out.stdout == ""
    assert needle in out.stderr


def test_unreachable_node_is_a_clean_error() -> None:
    out = cli("status", "--node", "127.0.0.1:1")
    assert out.returncode == 1
    assert out.stderr.startswith("error:")
    assert "Traceback" not in out.stderr


def test_usage_error_exit_2() -> None:
    out = cli("call")
    assert out.returncode == 2
    assert "usage:" in out.stderr


def test_keys_show_without_identity(tmp_path: Path) -> None:
    out = cli("keys", "show", "--data-dir", str(tmp_path / "empty"))
    assert out.returncode == 1
    assert "no identity" in out.stderr


def test_run_rejects_bad_options(tmp_path: Path) -> None:
    out = cli("run", "--name", "bad name!", "--data-dir", str(tmp_path))
    assert out.returncode == 1
    assert "invalid node name" in out.stderr
    out = cli("run", "--peer", "nonsense", "--discovery", "static", "--data-dir", str(tmp_path))
    assert out.returncode == 1
    assert "HOST:PORT" in out.stderr


def test_load_missing_file(tmp_path: Path) -> None:
    out = cli(
        "run",
        "--load",
        str(tmp_path / "missing.py"),
        "--discovery",
        "none",
        "--data-dir",
        str(tmp_path),
    )
    assert out.returncode == 1
    assert "no such file" in out.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("status", "--node", "127.0.0.1:http"), "is not HOST:PORT"),
        (("status", "--node", "127.0.0.1:70000"), "is not HOST:PORT"),
        (("status", "--node", "a b:1"), "is not HOST:PORT"),
        (("status", "--node", "[nope]:1"), "is not HOST:PORT"),
        (("call", "--node", "127.0.0.1:1", "--timeout", "-1", "demo.echo"), "0 or more"),
        (("run", "--grant", "weather:read"), "is not NODE_ID=SCOPE"),
        (("run", "--grant", "abc="), "is not NODE_ID=SCOPE"),
        (("run", "--grant", "abc=weather:read"), "is not a node id"),
    ],
)
def test_bad_arguments_are_usage_errors(args: tuple[str, ...], needle: str) -> None:
    out = cli(*args)
    assert out.returncode == 2
    assert needle in out.stderr


@pytest.mark.parametrize(
    ("given", "dialled"),
    [
        ("10.0.0.7", "10.0.0.7:50051"),
        ("10.0.0.7:7", "10.0.0.7:7"),
        ("::1", "[::1]:50051"),
        ("[::1]", "[::1]:50051"),
        ("[::1]:7", "[::1]:7"),
        ("node.lan", "node.lan:50051"),
        ("dns:///node.lan:7", "dns:///node.lan:7"),  # a gRPC target, as it is
    ],
)
def test_a_node_address_without_a_port_means_50051(given: str, dialled: str) -> None:
    assert build_parser().parse_args(["status", "--node", given]).node == dialled


def test_v_counts_before_and_after_the_command() -> None:
    ns = build_parser().parse_args(["-v", "status", "--node", "h", "-v"])
    assert ns.verbose + ns.verbose_after == 2


@pytest.mark.parametrize(
    ("setup", "needle"),
    [
        ("async def setup(node):\n    pass\n", "not async def"),
        ("x = 1\n", "has no setup(node) function"),
    ],
)
def test_run_refuses_bad_setup_files_and_bad_config_cleanly(
    tmp_path: Path, setup: str, needle: str
) -> None:
    agent = tmp_path / "agent.py"
    agent.write_text(setup)
    out = cli("run", "--discovery", "none", "--data-dir", str(tmp_path), "--load", str(agent))
    assert out.returncode == 1
    assert needle in out.stderr
    assert "Traceback" not in out.stderr
    assert "never awaited" not in out.stderr


def test_run_refuses_static_peers_with_discovery_none(tmp_path: Path) -> None:
    out = cli("run", "--discovery", "none", "--peer", "127.0.0.1:1", "--data-dir", str(tmp_path))
    assert out.returncode == 1
    assert "with 'none' nobody is dialled" in out.stderr


A, B = "a" * 32, "b" * 32  # node ids


def test_run_arguments_reach_the_config(tmp_path: Path) -> None:
    ns = build_parser().parse_args(
        ["run", "--discovery", "static", "--peer", "10.0.0.7:50051", "--data-dir", str(tmp_path),
         "--grant", f"{A}=weather:read", "--grant", f"{A}=library:write,x:y", "--grant", f"{B}=z",
         "--http-port", "-1"]
    )  # fmt: skip
    config = run_config(ns)
    assert config.peer_grants == {A: {"weather:read", "library:write", "x:y"}, B: {"z"}}
    assert config.peer_scopes == frozenset()  # nobody else gets anything
    assert (config.discovery, config.peers, config.http_port) == (
        "static",
        ["10.0.0.7:50051"],
        None,
    )
    assert config.resolved_data_dir == tmp_path


@pytest.mark.parametrize(
    ("source", "where", "said"),
    [
        ("def helper():\n    raise ValueError('oops')\n\ndef setup(node):\n    helper()\n",
         "line 2, in helper", "ValueError: oops"),
        ("import no_such_module_here\n\ndef setup(node):\n    pass\n",
         "line 1, in <module>", "No module named 'no_such_module_here'"),
    ],
)  # fmt: skip
def test_a_module_that_fails_to_load_shows_its_own_line(
    tmp_path: Path, source: str, where: str, said: str
) -> None:
    """From review: ``--load`` printed only ``error: oops``, with no file or line,
    even with -v. The author's own frames are shown (none of the node's)."""
    module = tmp_path / "agent.py"
    module.write_text(source)
    done = cli("run", "--discovery", "none", "--grpc-port", "0", "--http-port", "-1",
               "--data-dir", str(tmp_path / "d"), "--load", str(module))  # fmt: skip
    assert done.returncode == 1
    assert f"loading {module} failed" in done.stderr
    assert f'File "{module}", {where}' in done.stderr
    assert said in done.stderr
    assert "aralnode/node.py" not in done.stderr


def test_version_names_the_package(capsys: pytest.CaptureFixture[str]) -> None:
    from aralnode._version import __version__

    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"aralnode {__version__}"
