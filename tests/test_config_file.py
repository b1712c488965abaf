"""One config file: ``aralnode run --config node.toml``, ``aralnode config check|show``."""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from aralnode.cli import build_parser, run_config
from aralnode.config import NodeConfig
from aralnode.config_file import (
    ConfigFileError,
    coerce,
    field_docs,
    field_specs,
    key_lines,
    load_config,
)
from aralnode.config_template import default_toml, markdown_reference, toml_value
from aralnode.core.identity import KeyAlgorithm
from tests.conftest import DEMO
from tests.test_cli import ARALNODE, cli

ROOT = Path(__file__).resolve().parent.parent
A, B = "a" * 32, "b" * 32  # node ids


def write(tmp_path: Path, text: str, name: str = "node.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def refusal(path: Path) -> str:
    with pytest.raises(ConfigFileError) as caught:
        load_config(path)
    return str(caught.value)


# -- the door: a real node process started from a file ------------------------------


@pytest.fixture
def node_from_file(tmp_path: Path) -> Iterator[tuple[str, Path, str]]:
    """A node started by ``aralnode run --config``, with one flag over the file."""
    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "demo.py").write_text(Path(DEMO).read_text())
    config = write(
        tmp_path,
        'name = "from-file"\ndiscovery = "none"\ndata_dir = "state"\n'
        'load = ["agents/demo.py"]\ndrain_seconds = 2\n'
        "[grpc]\nport = 0\nmax_connections = 64\n"
        "[http]\nport = false   # off, as --http-port -1\n",
    )
    proc = subprocess.Popen(
        [ARALNODE, "run", "--config", str(config), "--name", "from-flag"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",  # relative paths of the file are the file's neighbours, not the cwd's
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    first = proc.stdout.readline()
    match = re.search(r"serving gRPC on (\S+)", first)
    assert match, f"node did not start: {first!r} {proc.stderr.read() if proc.poll() else ''}"
    try:
        yield match.group(1), tmp_path, first
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "in-flight calls have up to 2 s to finish" in err  # drain_seconds of the file


def test_a_node_runs_as_its_file_says_and_a_given_flag_wins(
    node_from_file: tuple[str, Path, str],
) -> None:
    address, directory, banner = node_from_file
    assert "aralnode from-flag" in banner  # --name over the file's name
    status = json.loads(cli("status", "--node", address, "--json").stdout)
    assert status["name"] == "from-flag"
    assert [e["protocol"] for e in status["endpoints"]] == ["grpc"]  # [http] port = false
    assert status["discovery"] == "none"
    assert (directory / "state" / "identity.pem").exists()  # data_dir beside the file
    called = cli("call", "--node", address, "demo.echo", '{"text": "hi"}')
    assert called.returncode == 0, called.stderr  # load = ["agents/demo.py"] ran
    assert "hi" in called.stdout


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[grpc]\nport = 0\nmax_connections = \"lots\"\n",
         'node.toml:3: grpc.max_connections: expected an integer, got "lots"'),
        ('name = "x"\n[grpc\nport = 1\n', "node.toml:2: not valid TOML: "),
        ("[grpc]\nmax_conections = 5\n",
         "node.toml:2: grpc.max_conections: unknown key; did you mean grpc.max_connections?"),
        ("[grpc]\nmax_connections = 0\n",
         "node.toml:2: grpc.max_connections: grpc_max_connections must be at least 1"),
    ],
)  # fmt: skip
def test_run_refuses_a_bad_file_with_line_key_and_reason(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    out = cli("run", "--config", str(path), "--data-dir", str(tmp_path / "d"))
    assert out.returncode == 2
    assert out.stderr.startswith(str(tmp_path / expected)), out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "d").exists()  # refused before anything started


def test_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    out = cli("run", "--config", str(tmp_path / "nope.toml"))
    assert out.returncode == 2
    assert "nope.toml: cannot read it: No such file or directory" in out.stderr


# -- what the file may say -------------------------------------------------------------


def test_every_type_of_field_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
name = "typed"
host = "127.0.0.1"
key_algorithm = "Ed25519"
allow_unsigned = false
drain_seconds = 3          # an integer for a float
data_dir = "rel/dir"
peer_scopes = ["b:x", "a:y"]
[http]
port = false
allowed_hosts = ["node.lan:*", "a=b"]
[peer.grants]
{A} = ["weather:read"]
"{B}" = ["x", "y"]
[grpc]
connection_age_ms = 60000
""",
    )
    config = load_config(path).config
    assert config.key_algorithm is KeyAlgorithm.ED25519
    assert (config.allow_unsigned, config.drain_seconds, config.http_port) == (False, 3.0, None)
    assert isinstance(config.drain_seconds, float)
    assert config.data_dir == tmp_path / "rel" / "dir"
    assert config.peer_scopes == frozenset({"a:y", "b:x"})
    assert config.http_allowed_hosts == ["node.lan:*", "a=b"]
    assert config.peer_grants == {A: {"weather:read"}, B: {"x", "y"}}
    assert config.grpc_connection_age_ms == 60000


def test_flat_dotted_and_table_keys_are_the_same_field(tmp_path: Path) -> None:
    flat = write(tmp_path, "grpc_max_connections = 7\n", "a.toml")
    dotted = write(tmp_path, "grpc.max_connections = 7\n", "b.toml")
    table = write(tmp_path, "[grpc]\nmax_connections = 7\n", "c.toml")
    inline = write(tmp_path, "grpc = { max_connections = 7 }\n", "d.toml")
    for path in (flat, dotted, table, inline):
        assert load_config(path).config.grpc_max_connections == 7, path.name
    both = write(tmp_path, "grpc_max_connections = 7\n[grpc]\nmax_connections = 8\n", "e.toml")
    assert "e.toml:3: grpc.max_connections: set twice (also as grpc_max_connections)" in (
        refusal(both)
    )


def test_every_field_reads_back_its_default_from_a_flat_key(tmp_path: Path) -> None:
    """The generic reader takes every field NodeConfig has, whatever its type (fields
    other groups add included), and the writer writes each as the reader reads it."""
    lines = [
        f"{spec.name} = {toml_value(spec.default)}"
        for spec in field_specs().values()
        if spec.default is not None and spec.name != "load"
    ]
    flat = sorted(lines, key=lambda line: " = {" in line or "= {}" in line)
    config = load_config(write(tmp_path, "\n".join(flat) + "\n")).config
    assert config == NodeConfig()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("grpc_port = true\n", ":1: grpc_port: expected an integer, got true"),
        ("drain_seconds = \"5\"\n", ':1: drain_seconds: expected a number, got "5"'),
        ("peers = \"h:1\"\n", ':1: peers: expected an array of strings, got "h:1"'),
        ("peers = [1]\n", ":1: peers: expected a string, got 1"),
        ("key_algorithm = \"RSA\"\n",
         ':1: key_algorithm: expected one of "ES256", "Ed25519", got "RSA"'),
        ("[peer_grants]\nx = \"y\"\n", ':2: peer_grants.x: expected an array of strings, got "y"'),
        ("durable = 1\n", ":1: durable: expected true or false, got 1"),
        ("[chanel]\nwindow = 3\n", ":1: chanel: unknown key; did you mean [channel]?"),
        ("[grpc]\nport = 70000\n", ":2: grpc.port: port 70000 is out of range"),
        ("name = \"bad name\"\n", ":1: name: invalid node name 'bad name'"),
        ("[mcp]\nmax_sessions = 4\nmax_sessions_per_client = 8\n",
         ":3: mcp.max_sessions_per_client: need 1 <= mcp_max_sessions_per_client"),
        ("x = 1\n\n[grpc]\nport = 1\n", ":1: x: unknown key"),
    ],
)  # fmt: skip
def test_a_bad_value_names_its_line_key_and_reason(
    tmp_path: Path, text: str, expected: str
) -> None:
    assert expected in refusal(write(tmp_path, text))


def test_apikeys_file_unset_is_the_data_dirs_and_an_empty_path_is_refused(
    tmp_path: Path,
) -> None:
    """From the attack probe: the docs said ``apikeys_file = ""`` meant the data dir's
    file, while the file (as for every path key) refuses an empty path. Left out or
    false is the data dir's file; "" is refused with its line and the way out."""
    data = tmp_path / "data"
    for text in ("", "apikeys_file = false\n"):
        config = load_config(write(tmp_path, f'data_dir = "{data}"\n{text}')).config
        assert config.apikeys_path == data / "apikeys.json"
    config = load_config(write(tmp_path, 'apikeys_file = "keys.json"\n')).config
    assert config.apikeys_path == tmp_path / "keys.json"  # the file's neighbour
    empty = refusal(write(tmp_path, 'apikeys_file = ""\n'))
    assert ':1: apikeys_file: expected a path (a string) (or false for none), got ""' in empty
    assert NodeConfig(data_dir=data, apikeys_file="").apikeys_path == data / "apikeys.json"  # type: ignore[arg-type]


def test_all_problems_are_reported_in_line_order(tmp_path: Path) -> None:
    path = write(tmp_path, 'grpc_port = "a"\nnope = 1\n[http]\nport = "b"\n')
    lines = refusal(path).splitlines()
    assert [line.split(":")[1] for line in lines] == ["1", "2", "4"]


def test_the_line_scanner_is_not_fooled_by_strings_and_multiline_values() -> None:
    text = (
        '# key = 1\nname = "a = b"  # c = d\n'
        "peers = [\n  'x = 1',\n  \"y = 2\",\n]\n"
        'note = """\nfake = 3\n"""\n'
        '[grpc]  # [http]\n"quoted.key" = 1\nport = 5\n'
        "[[t.u]]\nv = { w = 1 }\n"
    )
    lines = key_lines(text)
    assert lines[("name",)] == 2
    assert lines[("peers",)] == 3
    assert ("fake",) not in lines
    assert ("x",) not in lines
    assert lines[("note",)] == 7
    assert (lines[("grpc",)], lines[("grpc", "quoted.key")], lines[("grpc", "port")]) == (
        10,
        11,
        12,
    )
    assert (lines[("t", "u")], lines[("t", "u", "v")]) == (13, 14)


def test_coerce_takes_the_hints_other_fields_may_have(tmp_path: Path) -> None:
    assert coerce(["a", "b"], tuple[str, ...], tmp_path) == ("a", "b")
    assert coerce("x", Literal["x", "y"], tmp_path) == "x"
    assert coerce({"r": ["s"]}, dict[str, frozenset[str]], tmp_path) == {"r": frozenset({"s"})}
    assert coerce({"r": 3}, dict[str, int], tmp_path) == {"r": 3}
    assert coerce(False, float | None, tmp_path) is None
    assert coerce("/abs", Path | None, tmp_path) == Path("/abs")


# -- flags over the file -------------------------------------------------------------


def test_a_flag_overrides_the_file_only_when_given(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f'discovery = "static"\npeers = ["10.0.0.1:1"]\ndurable = true\nkeepalive_ms = 700\n'
        f'[grpc]\nport = 7000\n[http]\nport = 7001\n[peer_grants]\n{A} = ["x"]\n',
    )
    parse = build_parser().parse_args
    config = run_config(parse(["run", "--config", str(path)]))
    assert (config.grpc_port, config.http_port, config.durable, config.keepalive_ms) == (
        7000,
        7001,
        True,
        700,
    )
    assert config.peers == ["10.0.0.1:1"]
    assert config.peer_grants == {A: {"x"}}
    config = run_config(
        parse(["run", "--config", str(path), "--grpc-port", "9", "--http-port", "-1",
               "--peer", "10.0.0.2:2", "--grant", f"{B}=y", "--discovery", "static"])
    )  # fmt: skip
    assert (config.grpc_port, config.http_port, config.peers) == (9, None, ["10.0.0.2:2"])
    assert config.peer_grants == {B: {"y"}}
    assert config.durable
    assert config.keepalive_ms == 700


def test_every_run_flag_that_sets_a_field_defaults_to_none() -> None:
    """A flag with a default of its own would override the file even when left out."""
    ns = build_parser().parse_args(["run"])
    fields = {f.name for f in dataclasses.fields(NodeConfig)} | {"peer", "interface", "grant"}
    set_by_default = {k: v for k, v in vars(ns).items() if k in fields and v is not None}
    assert set_by_default == {}, "give these run flags default=None (NodeConfig has them)"
    assert run_config(ns) == NodeConfig()


def test_a_bad_flag_value_stays_the_flags_error(tmp_path: Path) -> None:
    path = write(tmp_path, 'discovery = "none"\n')
    ns = build_parser().parse_args(["run", "--config", str(path), "--peer", "10.0.0.1:1"])
    with pytest.raises(ValueError, match="with 'none' nobody is dialled") as caught:
        run_config(ns)
    assert not isinstance(caught.value, ConfigFileError) or "node.toml" in str(caught.value)


# -- config check and config show ----------------------------------------------------


def test_config_check_prints_values_and_sources(tmp_path: Path) -> None:
    path = write(tmp_path, "# a node\n\n[grpc]\nmax_connections = 64\n")
    out = cli("config", "check", "--config", str(path), "--grpc-port", "9", "--json")
    assert out.returncode == 0, out.stderr
    fields: dict[str, Any] = json.loads(out.stdout)["fields"]
    assert fields["grpc_max_connections"] == {"value": 64, "source": f"file {path}:4"}
    assert fields["grpc_port"] == {"value": 9, "source": "flag --grpc-port"}
    assert fields["key_algorithm"] == {"value": "ES256", "source": "default"}
    table = cli("config", "check", "--config", str(path))
    assert re.search(rf"grpc_max_connections\s+64\s+file {re.escape(str(path))}:4", table.stdout)
    bad = cli("config", "check", "--config", str(write(tmp_path, "grpc_port = -1\n", "b.toml")))
    assert bad.returncode == 2
    assert "b.toml:1: grpc_port: port -1 is out of range" in bad.stderr


def test_config_show_is_a_complete_file_that_reads_back_as_the_defaults(tmp_path: Path) -> None:
    out = cli("config", "show")
    assert out.returncode == 0, out.stderr
    assert out.stdout == default_toml()
    assert load_config(write(tmp_path, out.stdout)).config == NodeConfig()
    for spec in field_specs().values():  # every key is in it, set or commented
        key = spec.name.rsplit("_", 1)[-1]
        assert re.search(rf"^(# )?\S*{re.escape(key)}\b", out.stdout, re.MULTILINE), spec.name


def test_every_field_has_a_docstring_line() -> None:
    docs = field_docs()
    missing = [f.name for f in dataclasses.fields(NodeConfig) if not docs.get(f.name)]
    assert missing == [], "document these in NodeConfig's Attributes: section"


def test_docs_list_every_key() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    start = doc.index("<!-- generated: aralnode config show --markdown -->\n")
    end = doc.index("<!-- end generated -->")
    assert doc[start:end].split("\n", 1)[1] == markdown_reference(), (
        "docs/configuration.md is stale: "
        "paste `aralnode config show --markdown` between its markers"
    )


def test_config_check_never_prints_a_secret(tmp_path: Path) -> None:
    """A field kept out of repr (``oauth_client_secret``) shows as set, not its value
    (from review)."""
    path = tmp_path / "node.toml"
    path.write_text('oauth_client_secret = "S3CRET-VALUE"\n')
    for extra in ([], ["--json"]):
        command = [sys.executable, "-m", "aralnode.cli", "config", "check", "--config", str(path)]
        done = subprocess.run(
            [*command, *extra], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        assert "S3CRET" not in done.stdout
        assert "(set)" in done.stdout


def test_a_path_given_as_text_is_a_path() -> None:
    """From an attack: ``NodeConfig(data_dir="/tmp/x")`` (a str, as a program may
    write it) was taken, then failed at start with an AttributeError."""
    from aralnode import NodeConfig

    cfg = NodeConfig(name="p", data_dir="/tmp/p-node", policy_file="policy.toml")  # type: ignore[arg-type]
    assert (cfg.data_dir, cfg.policy_file) == (Path("/tmp/p-node"), Path("policy.toml"))
    with pytest.raises(ValueError, match="data_dir must be a path, not int"):
        NodeConfig(name="p", data_dir=5)  # type: ignore[arg-type]
