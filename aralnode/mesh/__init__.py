"""The mesh: A2A channels between nodes, and the connector that verifies peers.

::

    hub.py        ChannelHub: the messaging API, outboxes, pending requests, links
    receiver.py   a peer's batches: verified, checked, run through the pipeline
    verifier.py   signature checks of large batches in helper processes
    verify_helper.py  the helper process itself (stdlib and cryptography only)
    state.py      what outlives a link: per-peer state, subscriptions, settings
    link.py       one live stream: reader, deliverer, writer (no transport)
    streams.py    the gRPC side: accept and dial AgentNode.Channel streams
    connector.py  PeerConnector: dial, verify in a handshake, keep the client

Everything is built from explicit parts (identity, key ring, pipeline, context
builder, stores), never from the node.
"""
