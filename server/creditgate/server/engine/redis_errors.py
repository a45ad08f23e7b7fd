"""The one place that says what a Redis fault means to a caller of creditgate.

An error reply that means "not here" or "not now" (a replica after a failover, a Redis still loading its data, a
script holding Redis, a full memory, a cluster moving slots) is a fault of the moment: the command did not run (a
script is stopped at its first write, before it changed anything), so the caller's retry with the same request_id
is safe. Those answer UNAVAILABLE with a reason naming the cause; a lost or silent connection answers UNAVAILABLE
too. Any other error reply means a script or command of ours is wrong, which no retry mends: INTERNAL."""

from __future__ import annotations

from creditgate.server.errors import CreditgateError, InternalError, Unavailable
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)

# The reason of a READONLY answer: the caller's connection must be replaced to find the primary.
READONLY_REASON = "REDIS_READONLY"
# Error code (the reply's first word) → (ErrorInfo reason, what it means for the caller).
RETRY_LATER: dict[str, tuple[str, str]] = {
    "READONLY": (READONLY_REASON, "Redis is a read-only replica (after a failover?); the next call reconnects"),
    "LOADING": ("REDIS_LOADING", "Redis is loading its data set into memory"),
    "BUSY": ("REDIS_BUSY", "Redis is busy running a script"),
    "MASTERDOWN": ("REDIS_MASTERDOWN", "Redis is a replica that lost its primary"),
    "TRYAGAIN": ("REDIS_TRYAGAIN", "Redis Cluster is moving the keys' slot"),
    "CLUSTERDOWN": ("REDIS_CLUSTERDOWN", "Redis Cluster is down"),
    "OOM": ("REDIS_OOM", "Redis is out of memory (maxmemory reached)"),
}

# redis-py strips the code from the message of the replies it has a class for: the class names the code.
# MasterDownError is a ClusterDownError, so it comes first.
_CODE_OF_CLASS: tuple[tuple[type[RedisError], str], ...] = (
    (ReadOnlyError, "READONLY"),
    (BusyLoadingError, "LOADING"),
    (MasterDownError, "MASTERDOWN"),
    (ClusterDownError, "CLUSTERDOWN"),
    (TryAgainError, "TRYAGAIN"),
    (OutOfMemoryError, "OOM"),
)


def error_code(error: RedisError | str) -> str:
    """The Redis error code of an error reply ('READONLY', 'BUSY', 'ERR' …), or '' for a connection fault."""
    if isinstance(error, str):
        return error.split(" ", 1)[0]
    for kind, code in _CODE_OF_CLASS:
        if isinstance(error, kind):
            return code
    if isinstance(error, ResponseError):
        # A reply redis-py has no class for (BUSY among them) keeps its code as the message's first word.
        return str(error).split(" ", 1)[0]
    return ""


def redis_error(error: RedisError | str, doing: str) -> CreditgateError:
    """Our error for a Redis fault met while `doing` ('script decide', 'reading the customer' …); `error` may be
    an error reply's text (a decision of decide_many that failed inside its pcall)."""
    code = error_code(error)
    if code in RETRY_LATER:
        reason, meaning = RETRY_LATER[code]
        text = str(error)
        return Unavailable(f"{meaning} ({doing}: {text if text.startswith(code) else f'{code} {text}'})", reason=reason)
    if isinstance(error, str | ResponseError):
        return InternalError(f"{doing} failed: {error}")
    return Unavailable(f"Redis: {error}")
