"""aralnode: a gRPC-first agent mesh node.

The public face is small; everything else is private or lives in submodules
(``aralnode.core`` for the sans-IO protocol pieces, ``aralnode.testing`` for tests).
Names are imported lazily, so ``import aralnode.core`` never pulls in grpc.
"""

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from aralnode._version import __version__ as __version__

if _TYPE_CHECKING:
    from aralnode.config import NodeConfig
    from aralnode.core.capabilities import Capability
    from aralnode.core.context import CallContext, Credentials
    from aralnode.core.errors import (
        AralError,
        CapabilityNotFound,
        DeadlineExceeded,
        GovernanceBlocked,
        InvalidParameters,
        InvalidRequest,
        MalformedMessage,
        MessageTooLarge,
        NotFound,
        PeerNotFound,
        PermissionDenied,
        RateLimited,
        ReplayDetected,
        SignatureInvalid,
        StaleMessage,
        Unauthenticated,
        Unavailable,
    )
    from aralnode.core.governance import (
        Action,
        Decision,
        Direction,
        Evaluator,
        Rule,
        RuleEvaluator,
        Verdict,
    )
    from aralnode.core.identity import Identity, KeyAlgorithm
    from aralnode.core.peers import PeerInfo, PeerState
    from aralnode.discovery.backend import DiscoveryBackend, Hint
    from aralnode.mesh.hub import ChannelMessage, Subscription
    from aralnode.node import Node
    from aralnode.service.auth import Authenticated, Authenticator, Principal
    from aralnode.service.stages import AuditRecord, AuditSink, ResponseCheck
    from aralnode.transport.grpc_client import NodeClient


_LAZY: dict[str, str] = {
    "Action": "aralnode.core.governance",
    "AuditRecord": "aralnode.service.stages",
    "AuditSink": "aralnode.service.stages",
    "Authenticated": "aralnode.service.auth",
    "Authenticator": "aralnode.service.auth",
    "Principal": "aralnode.service.auth",
    "Credentials": "aralnode.core.context",
    "DiscoveryBackend": "aralnode.discovery.backend",
    "Hint": "aralnode.discovery.backend",
    "ResponseCheck": "aralnode.service.stages",
    "AralError": "aralnode.core.errors",
    "CallContext": "aralnode.core.context",
    "Capability": "aralnode.core.capabilities",
    "CapabilityNotFound": "aralnode.core.errors",
    "ChannelMessage": "aralnode.mesh.hub",
    "DeadlineExceeded": "aralnode.core.errors",
    "Decision": "aralnode.core.governance",
    "Direction": "aralnode.core.governance",
    "Evaluator": "aralnode.core.governance",
    "GovernanceBlocked": "aralnode.core.errors",
    "Identity": "aralnode.core.identity",
    "InvalidParameters": "aralnode.core.errors",
    "InvalidRequest": "aralnode.core.errors",
    "KeyAlgorithm": "aralnode.core.identity",
    "MalformedMessage": "aralnode.core.errors",
    "MessageTooLarge": "aralnode.core.errors",
    "Node": "aralnode.node",
    "NodeClient": "aralnode.transport.grpc_client",
    "NodeConfig": "aralnode.config",
    "NotFound": "aralnode.core.errors",
    "PeerInfo": "aralnode.core.peers",
    "PeerNotFound": "aralnode.core.errors",
    "PeerState": "aralnode.core.peers",
    "PermissionDenied": "aralnode.core.errors",
    "RateLimited": "aralnode.core.errors",
    "ReplayDetected": "aralnode.core.errors",
    "Rule": "aralnode.core.governance",
    "RuleEvaluator": "aralnode.core.governance",
    "SignatureInvalid": "aralnode.core.errors",
    "StaleMessage": "aralnode.core.errors",
    "Subscription": "aralnode.mesh.hub",
    "Unauthenticated": "aralnode.core.errors",
    "Unavailable": "aralnode.core.errors",
    "Verdict": "aralnode.core.governance",
}


__all__ = [
    "Action",
    "AralError",
    "AuditRecord",
    "AuditSink",
    "Authenticated",
    "Authenticator",
    "CallContext",
    "Capability",
    "CapabilityNotFound",
    "ChannelMessage",
    "Credentials",
    "DeadlineExceeded",
    "Decision",
    "Direction",
    "DiscoveryBackend",
    "Evaluator",
    "GovernanceBlocked",
    "Hint",
    "Identity",
    "InvalidParameters",
    "InvalidRequest",
    "KeyAlgorithm",
    "MalformedMessage",
    "MessageTooLarge",
    "Node",
    "NodeClient",
    "NodeConfig",
    "NotFound",
    "PeerInfo",
    "PeerNotFound",
    "PeerState",
    "PermissionDenied",
    "Principal",
    "RateLimited",
    "ReplayDetected",
    "ResponseCheck",
    "Rule",
    "RuleEvaluator",
    "SignatureInvalid",
    "StaleMessage",
    "Subscription",
    "Unauthenticated",
    "Unavailable",
    "Verdict",
    "__version__",
]


def __getattr__(name: str) -> _Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aralnode' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
