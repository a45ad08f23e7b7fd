"""Sign-in for the console: the password (plain or hashed) checked in constant time, server-side sessions behind
an HttpOnly SameSite=Strict cookie, a CSRF token per session, and a count of wrong passwords."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import deque
from dataclasses import dataclass, field

COOKIE = "creditgate_console"
# scrypt's cost: 2**14 x 8 takes about 16 MiB and tens of milliseconds, cheap for one sign-in, dear for guessing.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str) -> str:
    """`scrypt$N$r$p$salt$hash`: what CREDITGATE_CONSOLE_PASSWORD_HASH takes."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def _hashed_matches(password: str, hashed: str) -> bool:
    """Checks `scrypt$N$r$p$salt$hash` or `pbkdf2_sha256$iterations$salt$hash` (salt and hash base64url)."""
    parts = hashed.split("$")
    if parts[0] == "scrypt" and len(parts) == 6:
        n, r, p = (int(part) for part in parts[1:4])
        salt, expected = _unb64(parts[4]), _unb64(parts[5])
        # scrypt needs 128 * r * N bytes: maxmem must allow what the stored hash asks for.
        computed = hashlib.scrypt(
            password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(expected), maxmem=256 * r * n + 2**20
        )
    elif parts[0] == "pbkdf2_sha256" and len(parts) == 4:
        salt, expected = _unb64(parts[2]), _unb64(parts[3])
        computed = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, int(parts[1]), dklen=len(expected))
    else:
        raise ValueError("password_hash must be scrypt$N$r$p$salt$hash or pbkdf2_sha256$iterations$salt$hash")
    return hmac.compare_digest(computed, expected)


class PasswordCheck:
    """Compares a submitted password with the configured one (or its hash) in constant time."""

    def __init__(self, *, password: str | None, password_hash: str | None) -> None:
        if password is None and password_hash is None:
            raise ValueError("a password or a password hash is needed")
        if password_hash is not None:
            _hashed_matches("", password_hash)  # a malformed hash fails at start, not at the first sign-in
        self._hash = password_hash
        # Digests are compared, not the passwords: compare_digest is constant-time for equal lengths only. Without a
        # password there is a hash (checked above), and the digest is never read.
        self._digest = hashlib.sha256(password.encode()).digest() if password is not None else b""

    def matches(self, submitted: str) -> bool:
        if self._hash is not None:
            return _hashed_matches(submitted, self._hash)
        return hmac.compare_digest(hashlib.sha256(submitted.encode()).digest(), self._digest)


@dataclass
class Session:
    csrf: str
    signed_in: bool
    last_seen: float
    flash: list[str] = field(default_factory=list)


class Sessions:
    """Sessions kept in the console's memory, so signing out (or a restart) ends them for good."""

    def __init__(self, idle_seconds: int) -> None:
        self._idle = idle_seconds
        self._by_id: dict[str, Session] = {}

    def new(self, *, signed_in: bool) -> tuple[str, Session]:
        self._forget_idle()
        session_id = secrets.token_urlsafe(32)
        session = Session(csrf=secrets.token_urlsafe(32), signed_in=signed_in, last_seen=time.monotonic())
        self._by_id[session_id] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        session = self._by_id.get(session_id or "")
        if session is None:
            return None
        now = time.monotonic()
        if now - session.last_seen > self._idle:
            del self._by_id[session_id or ""]
            return None
        session.last_seen = now
        return session

    def end(self, session_id: str | None) -> None:
        self._by_id.pop(session_id or "", None)

    def _forget_idle(self) -> None:
        cutoff = time.monotonic() - self._idle
        for session_id in [key for key, session in self._by_id.items() if session.last_seen < cutoff]:
            del self._by_id[session_id]


class SignInFailures:
    """Wrong passwords: counted since start, and at most `per_minute` of them in any minute before sign-in
    pauses (for every client: the console sits behind proxies that hide the client's address)."""

    def __init__(self, per_minute: int) -> None:
        self.total = 0
        self._per_minute = per_minute
        self._recent: deque[float] = deque()

    def _trim(self, now: float) -> None:
        while self._recent and now - self._recent[0] > 60:
            self._recent.popleft()

    def paused(self) -> bool:
        self._trim(time.monotonic())
        return len(self._recent) >= self._per_minute

    def record(self) -> None:
        now = time.monotonic()
        self.total += 1
        self._recent.append(now)
        self._trim(now)


def csrf_matches(session: Session, submitted: str) -> bool:
    return hmac.compare_digest(session.csrf.encode(), submitted.encode())
