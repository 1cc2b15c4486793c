"""The ports handed to servers that bind them later stay free meanwhile: they are picked below
the kernel's ephemeral range, where no outgoing connection takes its local port (a webhook
receiver of tests/test_webhooks_cluster.py once found its port taken by a cluster's client)."""

from __future__ import annotations

import socket

from rmeeting.cluster.processes import LOWEST_PORT, _ephemeral_range, free_ports


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    low, _high = _ephemeral_range()
    ports = free_ports(8)
    assert len(set(ports)) == 8
    assert all(LOWEST_PORT <= port < low for port in ports), (ports, low)
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))


def test_a_redis_cluster_node_gets_its_bus_port_free_too() -> None:
    low, _high = _ephemeral_range()
    ports = free_ports(4, and_plus=10000)
    assert all(LOWEST_PORT <= port and port + 10000 < low for port in ports), (ports, low)
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port + 10000))
