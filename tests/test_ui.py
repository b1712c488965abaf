"""The live mesh page at ``/ui``: its files and headers over HTTP, the WebSocket
credential a browser can send, and the page itself in a real headless Chromium (the
system's, ``/usr/bin/chromium``) against a two-node mesh on loopback."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from aralnode import Node
from aralnode.access.apikeys import ApiKeyStore
from aralnode.bridge.ui import CSP, bearer_from_subprotocol, chosen_subprotocol
from aralnode.core.peers import PeerEvent
from tests.channel_helpers import linked

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
HOSTILE = "<img src=x onerror=window.__xss=1>"
WAIT_MS = 10_000  # every wait on the page is bounded by this

NO_CHROMIUM = "no system Chromium at /usr/bin/chromium (apt-get install chromium)"
HAVE_CHROMIUM = CHROMIUM.exists()
SUBSCRIBE = json.dumps({"type": "subscribe", "agent_id": "*", "channels": ["status"]})
needs_chromium = pytest.mark.skipif(not HAVE_CHROMIUM, reason=NO_CHROMIUM)


def base(node: Node) -> str:
    return f"http://127.0.0.1:{node.http_port}"


def bearer_protocol(token: str) -> str:
    return "aral.bearer." + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def api_key(node: Node, scopes: list[str]) -> str:
    key, _ = ApiKeyStore(node.config.apikeys_path).create("ui-user", scopes=scopes, kind="user")
    return key


# -- over HTTP: the files, their headers, the guards --------------------------------


async def test_the_page_and_its_assets_are_served_with_a_strict_policy(
    make_node: Callable[..., Node],
) -> None:
    node = make_node("ui-files", http_port=0)
    async with node, httpx.AsyncClient(base_url=base(node)) as http:
        for path, kind in (
            ("/ui", "text/html"),
            ("/ui/", "text/html"),
            ("/ui/app.js", "text/javascript"),
            ("/ui/app.css", "text/css"),
        ):
            r = await http.get(path)
            assert r.status_code == 200, path
            assert r.headers["content-type"].startswith(kind)
            assert r.headers["content-security-policy"] == CSP
            assert "default-src 'self'" in CSP
            assert "unsafe-inline" not in CSP
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["x-frame-options"] == "DENY"
            head = await http.head(path)
            assert head.status_code == 200
            assert head.content == b""
            assert head.headers["content-length"] == str(len(r.content))
            assert head.headers["content-security-policy"] == CSP
        page = (await http.get("/ui")).text
        assert "<script>" not in page  # no inline script: the CSP would refuse it
        assert "//" not in page.replace("http-equiv", "")  # nothing from elsewhere
        # The page is public; the data it shows is not (see the browser tests).
        assert (await http.get("/ui/nope.js")).status_code == 404
        # The HTTP door's guards hold for it as for every path.
        assert (await http.get("/ui", headers={"host": "evil.example"})).status_code == 421
        foreign = await http.get("/ui", headers={"origin": "https://evil.example"})
        assert foreign.status_code == 403


def test_the_page_ships_in_the_package() -> None:
    import importlib.resources

    root = importlib.resources.files("aralnode.bridge").joinpath("ui")
    for name in ("index.html", "app.js", "app.css"):
        assert root.joinpath(name).is_file(), name


async def test_a_websocket_carries_its_credential_as_a_subprotocol(
    make_node: Callable[..., Node],
) -> None:
    node = make_node("ui-ws", http_port=0, allow_unsigned=False)
    async with node:
        key = api_key(node, ["agent:read"])
        url = f"ws://127.0.0.1:{node.http_port}/ws"
        async with connect(url, subprotocols=["aral.v1", bearer_protocol(key)]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "aral.v1"  # the token is never echoed back
            await ws.send(
                json.dumps({"type": "subscribe", "agent_id": "*", "channels": ["status"]})
            )
            reply = json.loads(await ws.recv())
            assert reply["type"] == "subscribed", reply
        # A page elsewhere cannot use a token it holds against this node either.
        with pytest.raises(InvalidStatus) as foreign:
            async with connect(
                url,
                subprotocols=["aral.v1", bearer_protocol(key)],  # type: ignore[list-item]
                origin="https://evil.example",  # type: ignore[arg-type]
            ):
                pass
        assert foreign.value.response.status_code == 403
        # A wrong token refuses the upgrade, as a wrong Authorization header does.
        wrong = bearer_protocol("aral_0000000000000000_" + "x" * 43)
        with pytest.raises(InvalidStatus) as info:
            async with connect(url, subprotocols=["aral.v1", wrong]):  # type: ignore[list-item]
                pass
        assert info.value.response.status_code == 401
        # Without one, the upgrade is refused as a request without one is (401).
        with pytest.raises(InvalidStatus) as anonymous:
            async with connect(url, subprotocols=["aral.v1"]):  # type: ignore[list-item]
                pass
        assert anonymous.value.response.status_code == 401
        assert b"ANONYMOUS_REFUSED" in anonymous.value.response.body


def test_the_subprotocol_token_never_overrides_an_authorization_header() -> None:
    def scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
        return {"type": "websocket", "headers": list(headers)}

    offered = (b"sec-websocket-protocol", f"aral.v1, {bearer_protocol('tok')}".encode())
    plain = scope(offered)
    bearer_from_subprotocol(plain)
    assert (b"authorization", b"Bearer tok") in plain["headers"]
    assert chosen_subprotocol(plain) == "aral.v1"
    kept = scope((b"authorization", b"Bearer mine"), offered)
    bearer_from_subprotocol(kept)
    assert [v for k, v in kept["headers"] if k == b"authorization"] == [b"Bearer mine"]
    # Not base64url of a token: passed on as written, for the authenticate stage to refuse.
    odd = scope((b"sec-websocket-protocol", b"aral.bearer.dG9r%%%"))
    bearer_from_subprotocol(odd)
    assert (b"authorization", b"Bearer dG9r%%%") in odd["headers"]
    assert chosen_subprotocol(odd) is None  # aral.v1 not offered: none chosen
    http = {"type": "http", "headers": [offered]}
    bearer_from_subprotocol(http)
    assert http["headers"] == [offered]  # only a WebSocket upgrade


def test_each_subprotocol_token_becomes_an_authorization_header() -> None:
    """Two ``aral.bearer.…`` offered, in one ``Sec-WebSocket-Protocol`` header or in
    two (RFC 6455: several are one list), are two ``Authorization`` headers, which
    the authenticate stage refuses as any credential given twice; none is dropped."""
    one, two = bearer_protocol("tok1"), bearer_protocol("tok2")
    for headers in (
        [(b"sec-websocket-protocol", f"aral.v1, {one}, {two}".encode())],
        [(b"sec-websocket-protocol", f"aral.v1, {one}".encode()),
         (b"sec-websocket-protocol", two.encode())],
    ):  # fmt: skip
        scope: dict[str, Any] = {"type": "websocket", "headers": headers}
        bearer_from_subprotocol(scope)
        given = [v for k, v in scope["headers"] if k == b"authorization"]
        assert given == [b"Bearer tok1", b"Bearer tok2"]
        assert chosen_subprotocol(scope) == "aral.v1"


async def test_two_subprotocol_tokens_refuse_the_upgrade_whichever_is_good(
    make_node: Callable[..., Node],
) -> None:
    node = make_node("ui-two-tokens", http_port=0, allow_unsigned=False)
    async with node:
        key = api_key(node, ["agent:read"])
        good, wrong = bearer_protocol(key), bearer_protocol(key[:-4] + "AAAA")
        url = f"ws://127.0.0.1:{node.http_port}/ws"
        for offered in ([wrong, good], [good, wrong], [good, good]):
            with pytest.raises(InvalidStatus) as info:
                async with connect(url, subprotocols=["aral.v1", *offered]):  # type: ignore[list-item]
                    pass
            assert info.value.response.status_code == 401
            assert b"CREDENTIALS_AMBIGUOUS" in info.value.response.body
        async with connect(url, subprotocols=["aral.v1", good]) as ws:  # type: ignore[list-item]
            await ws.send(SUBSCRIBE)
            assert json.loads(await ws.recv())["type"] == "subscribed"


async def test_peers_list_their_channel_counts(make_node: Callable[..., Node]) -> None:
    a, b = make_node("ui-count-a", http_port=0), make_node("ui-count-b")
    async with a, b, httpx.AsyncClient(base_url=base(a)) as http:
        await linked(a, b)
        for i in range(3):
            assert await a.request(b.node_id, "demo.add", {"a": i, "b": 1}) == i + 1
        (peer,) = (await http.get("/v1/peers")).json()["peers"]
        assert int(peer["channelSentSeq"]) >= 3  # the requests
        assert int(peer["channelReceivedSeq"]) >= 3  # their answers


# -- in Chromium ----------------------------------------------------------------------


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Any]:
    """A page in the system's headless Chromium, with a fresh profile."""
    if not HAVE_CHROMIUM:
        pytest.skip(NO_CHROMIUM)
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
            timeout=WAIT_MS * 3,
            viewport={"width": 1400, "height": 1000},
        )
        context.set_default_timeout(WAIT_MS)
        try:
            page = await context.new_page()
            errors: list[str] = []
            page.errors = errors  # what the page's scripts threw: none, the tests say
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page
        finally:
            await context.close()


@needs_chromium
@pytest.mark.slow
async def test_the_page_shows_a_live_two_node_mesh_and_calls_from_it(
    make_node: Callable[..., Node], browser: Any
) -> None:
    from playwright.async_api import expect

    page = browser
    a, b = make_node("ui-a", http_port=0), make_node("ui-b")
    async with a, b:
        await linked(a, b)
        # A peer named by an outsider (a discovery announcement, say): shown as text.
        a.peer_table.apply("hostile", PeerEvent.DISCOVERED, address="127.0.0.1:9", name=HOSTILE)
        await page.goto(base(a) + "/ui")
        await expect(page.locator("body")).to_have_attribute("data-socket", "open")
        # An operator's key: every caller's governance decisions are theirs to see.
        key = api_key(a, ["agent:read", "agent:invoke", "aral:decisions"])
        await page.locator("#credential").fill(key)
        await page.locator("#credential-form button[type=submit]").click()
        await expect(page.locator("body")).to_have_attribute("data-socket", "open")
        nodes = page.locator("#nodes tbody")
        await expect(nodes.locator(f'tr[data-node-id="{a.node_id}"]')).to_contain_text("ui-a")
        peer_b = nodes.locator(f'tr[data-node-id="{b.node_id}"]')
        await expect(peer_b).to_contain_text("ui-b")
        await expect(peer_b).to_contain_text("PEER_STATE_CONNECTED")
        await expect(nodes.locator("td", has_text=HOSTILE)).to_have_count(1)
        assert await page.locator("#nodes img, img").count() == 0
        assert await page.evaluate("window.__xss") is None

        # The channel to b: its count moves as messages cross it, and a rate shows.
        sent = page.locator(f'#channels tr[data-node-id="{b.node_id}"] td.sent')
        await expect(sent).to_have_count(1)
        before = int(await sent.inner_text())
        for i in range(5):
            assert await a.request(b.node_id, "demo.add", {"a": i, "b": 1}) == i + 1
        await expect(sent).to_have_text(str(before + 5))
        row = page.locator(f'#channels tr[data-node-id="{b.node_id}"]')
        for cell in ("td.sent-rate", "td.received-rate"):  # messages a second, measured
            await expect(row.locator(cell)).to_have_text(re.compile(r"^\d+\.\d$"))

        # A call from the page: the capability's form, its result shown.
        await page.locator(
            '#capabilities button[data-capability="demo.add"]:not([data-to])'
        ).click()
        await page.locator("#invoke-params").fill(json.dumps({"a": 2, "b": 3}))
        await page.locator("#invoke-run").click()
        output = page.locator("#invoke-output")
        await expect(output).to_have_attribute("data-state", "ok")
        await expect(output).to_have_text("5")
        # And one to b, through a: forwarded over the channel.
        await page.locator(
            f'#capabilities button[data-capability="demo.add"][data-to="{b.node_id}"]'
        ).click()
        await page.locator("#invoke-params").fill(json.dumps({"a": 40, "b": 2}))
        await page.locator("#invoke-run").click()
        await expect(output).to_have_attribute("data-state", "ok")
        await expect(output).to_have_text("42")
        await expect(sent).to_have_text(str(before + 6))
        # A refusal is shown as the node's error.
        await page.locator("#invoke-params").fill(json.dumps({"a": "x"}))
        await page.locator("#invoke-run").click()
        await expect(output).to_have_attribute("data-state", "error")
        await expect(output).to_contain_text("invalid")
        # The decisions about those calls arrived live on the page.
        decisions = page.locator("#decisions li", has_text="demo.add")
        await expect(decisions).not_to_have_count(0)

        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "ui.png"), full_page=True)
        assert page.errors == []


@needs_chromium
@pytest.mark.slow
async def test_the_page_shows_nothing_without_credentials_where_the_node_asks_for_them(
    make_node: Callable[..., Node], browser: Any
) -> None:
    from playwright.async_api import expect

    page = browser
    node = make_node("ui-closed", http_port=0, allow_unsigned=False)
    runs: list[str] = []

    async def secret(_params: Any = None) -> str:
        runs.append("ran")
        return "secret"

    node.capability(id="vault.peek", scopes=("vault:read",))(secret)
    async with node:
        key = api_key(node, ["agent:read", "agent:invoke", "vault:read"])
        await page.goto(base(node) + "/ui")
        problem = page.locator("#problem")
        await expect(problem).to_be_visible()
        await expect(problem).to_contain_text("401")
        await expect(page.locator("#nodes tbody tr")).to_have_count(0)
        await expect(page.locator("#capabilities li")).to_have_count(0)
        assert key not in await page.content()

        # The user's key: kept for the session, sent as Authorization.
        await page.locator("#credential").fill(key)
        await page.locator("#credential-form button[type=submit]").click()
        await expect(page.locator(f'#nodes tr[data-node-id="{node.node_id}"]')).to_contain_text(
            "ui-closed"
        )
        await expect(problem).to_be_hidden()
        await expect(page.locator("body")).to_have_attribute("data-socket", "open")
        await page.locator('#capabilities button[data-capability="vault.peek"]').click()
        await page.locator("#invoke-run").click()
        await expect(page.locator("#invoke-output")).to_have_text('"secret"')
        assert runs == ["ran"]
        # The decision about the user's own call reaches the page, live.
        await expect(page.locator("#decisions li", has_text="vault.peek")).not_to_have_count(0)
        assert await page.evaluate("sessionStorage.getItem('aralnode.credential')") == key

        # Forgotten: the page is refused again, and the handler never runs for it.
        await page.locator("#forget").click()
        await expect(problem).to_contain_text("401")
        await expect(page.locator("#nodes tbody tr")).to_have_count(0)
        assert runs == ["ran"]
        assert page.errors == []
