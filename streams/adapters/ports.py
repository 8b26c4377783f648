"""Ports this host must give us before anything else starts."""

from __future__ import annotations

import socket

from streams.errors import ConfigError


def ensure_free(port: int, setting: str, host: str = "0.0.0.0") -> None:
    """ConfigError in one line when ``port`` cannot be bound: found before a worker joins
    any consumer group, where a late failure would cost the healthy workers beside it two
    rebalances."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the servers bind: a port left in TIME_WAIT by a stopped worker is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"invalid setting {setting}: port {port} is in use on this "
                              f"host ({exc.strerror})") from None
