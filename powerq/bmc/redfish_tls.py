"""What the Redfish driver passes to ``requests`` as ``verify``.

TLS is verified by default (the system's trust store). A node may carry its
own CA bundle (PEM text, e.g. the BMC's self-signed certificate): it is
written once to a private file named by its SHA-256 under
``$POWERQ_DATA_DIR/redfish-ca/`` (directory 0700, file 0600) and that path
is passed as ``verify``. ``verify_tls=False`` turns verification off for the
node (only on a network you trust).
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from powerq.bmc.base import BmcTarget

CA_DIR_NAME = "redfish-ca"
_write_lock = threading.Lock()


def ca_dir() -> Path:
    """Where CA bundle files are kept (under the data dir)."""
    from powerq.config import get_settings

    return get_settings().data_dir.resolve() / CA_DIR_NAME


def ca_bundle_path(pem: str, directory: Path | None = None) -> Path:
    """The private file holding ``pem``, written on first use.

    Named by the SHA-256 of the text, so a changed bundle gets a new file and
    an unchanged one is written once per host. Written to a temporary file
    (0600) and renamed into place, so a reader never sees half a bundle.

    :raises OSError: the directory or the file cannot be written.
    """
    directory = directory or ca_dir()
    data = pem.encode("utf-8")
    path = directory / f"{hashlib.sha256(data).hexdigest()}.pem"
    if path.exists():
        return path
    with _write_lock:
        if path.exists():
            return path
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = directory / f".{path.name}.{os.getpid()}.{threading.get_ident()}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    return path


def verify_argument(target: BmcTarget) -> bool | str:
    """``requests``' ``verify`` for ``target``: False, a CA bundle path, or True.

    :raises OSError: the node's CA bundle cannot be written to its file.
    """
    if not target.verify_tls:
        return False
    if target.ca_bundle:
        return str(ca_bundle_path(target.ca_bundle))
    return True
