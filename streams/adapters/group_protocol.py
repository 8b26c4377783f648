"""The consumer group protocol the agents use, and librdkafka's settings for it.

``consumer`` is Kafka 4's protocol (KIP-848): the broker assigns partitions, one member
at a time, and owns the session timeout and heartbeat. The classic protocol comes with
an assignor: ``cooperative-sticky`` moves only the partitions that change owner,
``range`` stops the whole group at each rebalance. A broker without the new protocol
(Tansu, Kafka before 3.7) never assigns a ``consumer`` member anything and says nothing,
so ``auto`` asks the broker first.

What ``auto`` picks (measured with bench/rebalance.py on Apache Kafka 4.4 and Tansu):
- on a broker with the consumer protocol, for a dynamic member, the consumer protocol: a
  joining member gets its partitions within 0.4 s and only those move (range stops every
  member), a restarted one fetches again 2.4 s after its start;
- there, for a static member (WORKER_ID), the classic protocol with cooperative-sticky: a
  killed worker that comes back fetches again about 3 s after its start, where the
  consumer protocol refuses the same instance id (UNRELEASED_INSTANCE_ID) until the old
  session has timed out;
- elsewhere range: Tansu never hands the partitions that a cooperative rebalance revoked
  to the new member, so they would stay unread there.
"""

from __future__ import annotations

from typing import Any

from streams.adapters.kafka import api_keys
from streams.errors import ConfigError

#: ConsumerGroupHeartbeat, the request of the new protocol.
_CONSUMER_GROUP_HEARTBEAT = 68


async def broker_has_consumer_protocol(bootstrap: str) -> bool:
    """Whether the broker answers ConsumerGroupHeartbeat (from its ApiVersions)."""
    return _CONSUMER_GROUP_HEARTBEAT in await api_keys(bootstrap)


async def resolve(setting: str, bootstrap: str, static: bool = False) -> str:
    """The protocol to use for CONSUMER_GROUP_PROTOCOL=``setting`` (``static``: the
    worker has a WORKER_ID). The broker is asked whatever the setting: its answer is also
    the worker's one-line RetryableError when no broker answers (Faust's client would
    print a long traceback instead)."""
    offered = await broker_has_consumer_protocol(bootstrap)
    if setting not in ("auto", "consumer"):
        return setting
    if setting == "consumer" and not offered:
        raise ConfigError(f"invalid setting CONSUMER_GROUP_PROTOCOL: the broker at {bootstrap} "
                          "does not offer the consumer protocol (KIP-848); use auto, "
                          "cooperative-sticky or range")
    if setting == "consumer":
        return "consumer"
    if not offered:
        return "range"
    return "cooperative-sticky" if static else "consumer"


def librdkafka_settings(protocol: str, session_timeout_ms: int, heartbeat_interval_ms: int,
                        ) -> dict[str, Any]:
    """The consumer settings of a resolved protocol (librdkafka refuses the session,
    heartbeat and assignor settings under the consumer protocol)."""
    if protocol == "consumer":
        return {"group.protocol": "consumer"}
    return {"group.protocol": "classic", "partition.assignment.strategy": protocol,
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": heartbeat_interval_ms}
