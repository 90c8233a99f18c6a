"""BMC passwords at rest: Fernet (cryptography) with a key from ``POWERQ_SECRET_KEY``,
or generated once into ``$POWERQ_DATA_DIR/secret.key`` with mode 0600.

Plaintext passwords exist only in memory, only inside the executor, only for
the duration of a BMC call: never in a repr, a log line, a task message or an
API response.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from powerq.config import get_settings
from powerq.errors import ConfigError

KEY_FILE_NAME = "secret.key"


def _read_or_create_key_file(path: Path) -> bytes:
    """Return the key stored at ``path``, creating it (mode 0600) on first use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as handle:
        key = Fernet.generate_key()
        handle.write(key)
    return key


@functools.cache
def _fernet(key: str | None, data_dir: Path) -> Fernet:
    raw = key.encode() if key else _read_or_create_key_file(data_dir / KEY_FILE_NAME)
    try:
        return Fernet(raw)
    except (ValueError, TypeError):
        raise ConfigError(
            "POWERQ_SECRET_KEY must be a url-safe base64 32-byte Fernet key "
            "(make one with: python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())')"
        ) from None


def cipher() -> Fernet:
    """The process's Fernet cipher.

    :raises ConfigError: the configured key is malformed.
    """
    settings = get_settings()
    # absolute() (no system calls) rather than resolve() (a realpath per call, which
    # cost more than the encryption itself: ~0.1 ms, paid per password of an import).
    return _fernet(settings.secret_key, settings.data_dir.absolute())


def encrypt_password(plaintext: str) -> bytes:
    """Encrypt a BMC password for storage.

    :raises ConfigError: the configured key is malformed.
    """
    return cipher().encrypt(plaintext.encode())


def decrypt_password(token: bytes) -> str:
    """Decrypt a stored BMC password.

    :raises ConfigError: the key is malformed or is not the key it was stored with.
    """
    try:
        return cipher().decrypt(token).decode()
    except InvalidToken:
        raise ConfigError(
            "cannot decrypt a stored BMC password: POWERQ_SECRET_KEY (or the data dir's "
            "secret.key) differs from the key it was stored with"
        ) from None
