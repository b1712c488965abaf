"""The static backend: configured ``host:port`` peers (``NodeConfig.peers``,
``aralnode run --peer``), dialled until reached and again whenever lost."""

from __future__ import annotations

from collections.abc import Iterable

from aralnode.discovery.backend import Announcement, Hint, HintSink

SOURCE = "static"


class StaticBackend:
    """Hints for each configured address, once, at start (the supervisor keeps
    dialling them: they are ``persistent``)."""

    name = SOURCE

    def __init__(self, addresses: Iterable[str]) -> None:
        self.addresses = tuple(dict.fromkeys(addresses))

    async def start(self, announcement: Announcement, sink: HintSink) -> None:
        for address in self.addresses:
            sink.hint(Hint(key=address, addresses=(address,), source=SOURCE, persistent=True))

    async def update(self, announcement: Announcement) -> None:
        """Configured peers learn of changes by handshaking again; nothing to announce."""

    async def stop(self) -> None:
        """Nothing was announced; the supervisor stops the dials."""


__all__ = ["StaticBackend"]
