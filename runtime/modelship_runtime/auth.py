"""API keys from a mounted Secret, re-read when the Secret changes, compared in constant time.

``MODELSHIP_API_KEYS_FILE`` names a file (one key per line) or a directory (a Secret
volume: one file per Secret key). Kubernetes updates a Secret volume by writing a new
timestamped directory and swapping the ``..data`` symlink to it, so a change shows as a
new inode (or mtime, or size) of the files the names resolve to. :meth:`KeyRing.watch`
stats them about once a second on the event loop (a few ``stat`` calls, off the request
path) and reloads in a thread when the signature changes: a rotated key works, and the
old one stops working, within a second or two, without a restart.

A key file that cannot be used (unreadable, not UTF-8, a control character, no key at
all) is a one-line :class:`KeyFileError`: at start the console script exits 2 with it; on
reload the old keys stay in force, one line is logged and
``modelship_api_keys_reload_errors_total`` counts it.

Requests are checked by :meth:`KeyRing.match`: the SHA-256 of the key sent is compared
with the SHA-256 of every configured key with :func:`hmac.compare_digest`, all of them,
always, so neither the time taken nor an early exit says which key (or how long a key)
matched. The match names the key by a short digest, the rate limit's bucket; the key
itself is never logged or stored anywhere else.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

SETTING = "MODELSHIP_API_KEYS_FILE"
POLL_SECONDS = 1.0

Signature = tuple[tuple[str, int, int, int, int], ...]


class KeyFileError(Exception):
    """The key file cannot be used; the message is one line naming the file and why."""


def _key_files(path: Path) -> list[Path]:
    if path.is_dir():  # a Secret volume: skip kubelet's ..data and ..TIMESTAMP entries
        return sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.is_file())
    return [path]


def load_api_keys(path: Path) -> list[bytes]:
    """API keys from a file (one per line) or a directory of such files: a mounted
    Secret, whose every key is a file. KeyFileError (one line) when a file cannot be read,
    is not UTF-8 or holds a control character."""
    keys: list[bytes] = []
    try:
        files = _key_files(path)
        for f in files:
            raw = f.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise KeyFileError(f"{SETTING} {f}: not UTF-8 text (byte 0x{raw[exc.start]:02x} "
                                   f"at offset {exc.start}); keys are UTF-8 text, one per "
                                   "line") from None
            for n, line in enumerate(text.splitlines(), 1):
                key = line.strip()
                if any(ord(c) < 32 or ord(c) == 127 for c in key):
                    raise KeyFileError(f"{SETTING} {f}: line {n} holds a control character; "
                                       "keys are printable text, one per line")
                if key:
                    keys.append(key.encode())
    except OSError as exc:
        raise KeyFileError(f"{SETTING} {path}: {exc.strerror or exc}") from None
    return keys


def signature(path: Path) -> Signature:
    """What changes when the key files change: each file's resolved path, inode, device,
    mtime and size (cheap: one stat per file)."""
    out: list[tuple[str, int, int, int, int]] = []
    try:
        for f in _key_files(path):
            real = os.path.realpath(f)
            st = os.stat(real)
            out.append((real, st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size))
    except OSError:
        return (("", -1, -1, -1, -1),)  # unreadable: differs from any readable state
    return tuple(out)


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


class KeyRing:
    """The API keys in force; reloaded by :meth:`watch` when the files change."""

    def __init__(self, path: Path, *, on_reload: Callable[[bool, int], None] | None = None
                 ) -> None:
        """Read the keys now (KeyFileError when they cannot be used). ``on_reload(ok,
        n_keys)`` is called after each reload attempt."""
        self.path = path
        self._on_reload = on_reload
        self._sig = signature(path)
        self._set(self._read())

    def _read(self) -> list[bytes]:
        keys = load_api_keys(self.path)
        if not keys:
            raise KeyFileError(f"{SETTING} {self.path}: holds no API key (one key per line; "
                               "a directory: every file in it, e.g. each key of a mounted "
                               "Secret)")
        return keys

    def _set(self, keys: list[bytes]) -> None:
        digests = sorted({_digest(k) for k in keys})
        # One assignment: a request on the event loop never sees half a reload.
        self._ring = tuple((d, d[:8].hex()) for d in digests)

    def __len__(self) -> int:
        return len(self._ring)

    def match(self, given: bytes) -> str | None:
        """The id of the key ``given`` is (a short digest, never the key), or None. Every
        configured key is compared, in constant time, whatever matches."""
        if not given:
            return None
        d = _digest(given)
        found = None
        for key, key_id in self._ring:  # no early exit
            if hmac.compare_digest(d, key):
                found = key_id
        return found

    def reload_if_changed(self) -> bool | None:
        """Re-read the keys when the files changed (call from a thread: it reads files).
        True: reloaded; False: changed but unusable, the old keys stay; None: unchanged."""
        sig = signature(self.path)
        if sig == self._sig:
            return None
        self._sig = sig
        try:
            keys = self._read()
        except KeyFileError as exc:
            logger.error("API keys not reloaded; the previous keys stay in force: %s", exc,
                         extra={"keys": len(self._ring)})
            if self._on_reload:
                self._on_reload(False, len(self._ring))
            return False
        self._set(keys)
        logger.info("API keys reloaded", extra={"keys": len(self._ring)})
        if self._on_reload:
            self._on_reload(True, len(self._ring))
        return True

    async def watch(self, interval: float = POLL_SECONDS) -> None:
        """Check for changes every ``interval`` seconds until cancelled. The check is a
        few stat calls on the event loop; only a change costs a thread hop."""
        while True:
            await asyncio.sleep(interval)
            if signature(self.path) != self._sig:
                await asyncio.to_thread(self.reload_if_changed)
