"""The node's identity key file: ``identity.pem`` (PKCS#8, mode 0600) in the data dir."""

from __future__ import annotations

import os
from pathlib import Path

from aralnode.core.identity import Identity, KeyAlgorithm

KEY_FILE = "identity.pem"


def load_identity(data_dir: Path, algorithm: KeyAlgorithm = KeyAlgorithm.ES256) -> Identity:
    """Load ``data_dir/identity.pem``, making it (mode 0600) on first run.

    The new key is written to a temporary file and renamed into place, so a crash
    never leaves half a key behind.
    """
    path = data_dir / KEY_FILE
    if path.exists():
        return Identity.from_pem(path.read_bytes())
    data_dir.mkdir(parents=True, exist_ok=True)
    identity = Identity.generate(algorithm)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(identity.to_pem())
    os.replace(tmp, path)
    return identity
