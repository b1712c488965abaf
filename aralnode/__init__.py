"""aralnode: a gRPC-first agent mesh node.

The public face is small; everything else is private or lives in submodules
(``aralnode.core`` for the sans-IO protocol pieces, ``aralnode.testing`` for tests).
"""

from aralnode.config import NodeConfig
from aralnode.core.capabilities import Capability
from aralnode.core.context import CallContext
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
from aralnode.node import Node
from aralnode.transport.grpc_client import NodeClient

__version__ = "0.1.0"

__all__ = [
    "Action",
    "AralError",
    "CallContext",
    "Capability",
    "CapabilityNotFound",
    "DeadlineExceeded",
    "Decision",
    "Direction",
    "Evaluator",
    "GovernanceBlocked",
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
    "RateLimited",
    "ReplayDetected",
    "Rule",
    "RuleEvaluator",
    "SignatureInvalid",
    "StaleMessage",
    "Unauthenticated",
    "Unavailable",
    "Verdict",
    "__version__",
]
