"""Static API keys: the simple credential, one per site (or per reading service).

The file holds one key a line, never the key itself::

    # digest                                                                 site(s)   subject
    sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 clinic-a  pacs-bridge
    sha256:...                                                               *         reading-svc

A site field is one site, several joined by commas, or ``*`` (every configured site).
Why SHA-256 and not scrypt/argon2: the keys are made by :func:`new_api_key` with 256
random bits, so there is nothing to guess offline that a slow hash would protect (slow
hashes protect low-entropy passwords) -- and a slow hash would cost every request tens
of milliseconds. A presented key is hashed and compared with every stored digest by
:func:`hmac.compare_digest`, without stopping at a match, so the time taken says
nothing about which key (or how much of one) matched.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from framecdn.errors import ConfigError

#: What a key made by :func:`new_api_key` starts with (tells it apart from a JWT at a glance).
KEY_PREFIX = "fcdn_"
#: How often a request may look whether the keys file changed (one stat, no read).
CHANGE_CHECK_SECONDS = 1.0
log = logging.getLogger(__name__)
_LINE = re.compile(r"sha256:(?P<hex>[0-9a-f]{64})\s+(?P<sites>\S+)\s+(?P<subject>\S.*)")


def new_api_key() -> str:
    """A fresh key with 256 random bits."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest_line(key: str, sites: str, subject: str) -> str:
    """The line of the keys file that accepts ``key`` for ``sites`` as ``subject``."""
    return f"sha256:{hashlib.sha256(key.encode()).hexdigest()} {sites} {subject}"


@dataclass(frozen=True, slots=True)
class ApiKey:
    digest: bytes
    sites: tuple[str, ...]
    subject: str


class ApiKeys:
    """The accepted keys, by digest; looked up in constant time."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys

    @classmethod
    def load(cls, path: str) -> ApiKeys:
        """Read a keys file; a line that is not ``sha256:<hex> site subject`` is refused."""
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"FRAMECDN_AUTH_API_KEYS_FILE={path!r}: {exc.strerror}") from None
        keys = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            match = _LINE.fullmatch(line)
            if match is None:
                raise ConfigError(
                    f"{path}:{number}: not `sha256:<64 hex digits> site subject` "
                    "(keys are stored hashed: `framecdn api-key` prints the line)"
                )
            sites = tuple(s for s in match["sites"].split(",") if s)
            keys.append(ApiKey(bytes.fromhex(match["hex"]), sites, match["subject"].strip()))
        return cls(keys)

    def lookup(self, presented: str) -> ApiKey | None:
        """The key entry ``presented`` matches, or None; every entry is compared."""
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for key in self.keys:
            if hmac.compare_digest(key.digest, digest):
                found = key
        return found


class ApiKeysFile:
    """The keys file as it is now: revoking or adding a key needs no restart.

    It is read again when it changes (looked at, by one ``stat``, at most once a
    second on the way to a lookup) and on :meth:`reload` (SIGHUP). The new keys replace
    the old in one assignment, so a request sees one set or the other. A new file that
    cannot be read or parsed keeps the old keys and says why in the log: a typo while
    editing must not lock every site out (nor let a revoked key back in by emptying the
    list). At start, a bad file is an error, as before.
    """

    def __init__(
        self, path: str, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = path
        self.clock = clock
        self.seen = self._signature()
        self.keys = ApiKeys.load(path)
        self.checked = clock()

    def lookup(self, presented: str) -> ApiKey | None:
        if self.clock() - self.checked >= CHANGE_CHECK_SECONDS:
            self.reload(only_if_changed=True)
        return self.keys.lookup(presented)

    def reload(self, *, only_if_changed: bool = False) -> bool:
        """Read the file again; True if its keys are now the ones in use."""
        self.checked = self.clock()
        signature = self._signature()
        if only_if_changed and signature == self.seen:
            return False
        self.seen = signature  # a bad version is reported once, not once a second
        try:
            keys = ApiKeys.load(self.path)
        except ConfigError as exc:
            log.warning(
                "API keys file not reloaded, the %d keys in use stay: %s", len(self.keys.keys),
                exc,
            )
            return False
        self.keys = keys
        log.info("API keys reloaded from %s: %d keys", self.path, len(keys.keys))
        return True

    def _signature(self) -> tuple[int, int, int] | None:
        """What changes when the file is rewritten or replaced (rename over it)."""
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns)
