"""Optional API keys for POST /predict (docs/security.md).

The replicas read the keys from a file (`api_key_file` in build_app's args; MLOPS_API_KEY_FILE
in the container), one key a line (commas also separate; blank lines and `#` comments are
skipped), and read it again when it changes. A request to a protected route must carry
`Authorization: Bearer <key>`; each key is compared in constant time (hmac.compare_digest).
Keys are never logged and never become metric labels: a refusal is recorded as status 401.
A key file that cannot be read refuses every protected request (503), it never opens the API.
"""

from __future__ import annotations

import hmac
import os
import time
from pathlib import Path

PROTECTED_ROUTES = frozenset({"/predict"})
RECHECK_S = 1.0  # how often the file's identity (inode, size, mtime) is looked at


class KeyFileError(RuntimeError):
    """The key file is missing, unreadable or holds no key."""


def read_keys(path: str | os.PathLike) -> list[str]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise KeyFileError(f"cannot read the API key file {path}: {exc.strerror}") from None
    keys = [part.strip() for line in text.splitlines() if not line.lstrip().startswith("#") for part in line.split(",")]
    keys = [k for k in keys if k]
    if not keys:
        raise KeyFileError(f"the API key file {path} holds no key")
    return keys


class ApiKeys:
    """The keys of one file, re-read when the file changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._identity: tuple | None = None
        self._keys: list[bytes] = []
        self._error: str | None = None
        self._checked = 0.0
        self._load()

    def _load(self) -> None:
        self._checked = time.monotonic()
        try:
            info = os.stat(self.path)
        except OSError as exc:
            self._identity, self._keys, self._error = None, [], f"cannot read the API key file: {exc.strerror}"
            return
        identity = (info.st_ino, info.st_size, info.st_mtime_ns)
        if identity == self._identity:
            return
        try:
            self._keys = [k.encode() for k in read_keys(self.path)]
            self._error = None
        except KeyFileError as exc:
            self._keys, self._error = [], str(exc)
        self._identity = identity

    def check(self, authorization: bytes | None) -> tuple[int, str] | None:
        """None when `authorization` (the header's value) carries a valid key, else
        (status, message): 401 for a missing or wrong key, 503 when the keys cannot be read."""
        if time.monotonic() - self._checked >= RECHECK_S:
            self._load()
        if self._error:
            return 503, "the API cannot check keys right now (its key file is unreadable); tell the operator"
        scheme, _, given = (authorization or b"").partition(b" ")
        if scheme.lower() != b"bearer" or not given.strip():
            return 401, "this route needs an API key: send the header `Authorization: Bearer <key>`"
        given = given.strip()
        matched = False
        for key in self._keys:  # every key compared: the time does not tell which one was close
            matched |= hmac.compare_digest(given, key)
        return None if matched else (401, "the API key is not valid")
