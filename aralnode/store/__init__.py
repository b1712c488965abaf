"""What a node keeps on disk, and its in-memory stand-ins: the channel outbox and
inbox (memory or SQLite), the identity key file, the data dir's lock.

The I/O of the node lives here, not in ``aralnode.core``; the core only describes
what is kept (``core.outbox`` records, ``core.identity`` keys as bytes).
"""

from aralnode.store.base import Inbox, Outbox
from aralnode.store.memory import MemoryInbox, MemoryOutbox
from aralnode.store.sqlite import SqliteStore

__all__ = ["Inbox", "MemoryInbox", "MemoryOutbox", "Outbox", "SqliteStore"]
