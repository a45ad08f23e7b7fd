"""Redis's eviction policy, checked at start: a Redis that may evict any key loses money.

Balances, holds and the outbox of acknowledged decisions are keys without a TTL; only the remembered request_id
answers have one. Under `allkeys-*` a full Redis evicts balances (a customer starts over from nothing, or its
next decision is made on a missing wallet) and outbox entries (acknowledged charges that never reach the ledger):
refused. Under `volatile-*` it evicts remembered answers only, so a retry of an evicted request_id is charged
again: a warning. `noeviction` makes a full Redis refuse writes, which the calls answer as retryable."""

from __future__ import annotations

from typing import Any

import structlog
from creditgate.server.engine.cluster import RedisClient
from creditgate.server.errors import FailedPrecondition, Unavailable
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError, ResponseError, TimeoutError

log = structlog.get_logger(__name__)
SAFE_POLICY = "noeviction"


async def check_eviction_policy(redis: RedisClient) -> str | None:
    """The Redis's maxmemory-policy (on a cluster, the first unsafe one of its primaries', each asked), or None when
    CONFIG is renamed or not allowed (then it cannot be checked: a warning). Raises FailedPrecondition for a policy
    that can evict balances or the outbox."""
    try:
        if isinstance(redis, RedisCluster):
            answers: Any = await redis.config_get("maxmemory-policy", target_nodes=RedisCluster.PRIMARIES)
            policies = [str(answer.get("maxmemory-policy", "")) for answer in answers.values()]
            # The most dangerous one is the one to look at: allkeys-* first, then volatile-*.
            policy = min(policies, key=lambda name: (not name.startswith("allkeys-"), not name.startswith("volatile-")))
        else:
            policy = str((await redis.config_get("maxmemory-policy")).get("maxmemory-policy", ""))
    except ResponseError as exc:  # CONFIG renamed away (managed Redis services do) or not in the user's ACL
        log.warning(
            "redis_eviction_policy_unchecked",
            error=str(exc),
            advice=f"make sure maxmemory-policy is {SAFE_POLICY}: any allkeys-* policy can evict balances",
        )
        return None
    except (ConnectionError, TimeoutError) as exc:
        raise Unavailable(f"cannot reach Redis: {exc}") from exc
    if policy.startswith("allkeys-"):
        raise FailedPrecondition(
            f"Redis maxmemory-policy is {policy}: a full Redis would evict balances, holds and acknowledged"
            f" decisions not yet in the ledger; set maxmemory-policy {SAFE_POLICY}"
            f" (CONFIG SET maxmemory-policy {SAFE_POLICY}, and in redis.conf)",
            field="maxmemory-policy",
            reason="REDIS_MAY_EVICT_BALANCES",
        )
    if policy.startswith("volatile-"):
        log.warning(
            "redis_evicts_remembered_answers",
            policy=policy,
            advice=f"a full Redis evicts remembered request_id answers, so a retry can be charged twice;"
            f" set maxmemory-policy {SAFE_POLICY}",
        )
    return policy
