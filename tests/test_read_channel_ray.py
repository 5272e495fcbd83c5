"""Reads over the stores' read channels on a real local Ray instance (see actors/read_channel.py).

Clients use the channel by default, so every other Ray test reads through it
too. These tests check that it is the path taken and that it finds a
restarted store. They also check that a client falls back to Ray calls when
a store has no channel.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import ray

from rayconf.actors import cluster
from rayconf.actors.cluster import ClusterSpec
from rayconf.actors.read_channel import NONCE_BYTES, PROTOCOL, pack_frame, proof
from rayconf.clients.async_client import AsyncClient
from rayconf.clients.client import Client

STORE = "dc-a-s1"


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSpec]:
    data = tmp_path_factory.mktemp("rayconf-read-channel")
    built = cluster.default_spec(str(data), namespace="rayconf-test-read-channel")
    with cluster.local_cluster(built):
        yield built


def _store_status(spec: ClusterSpec, store: str = STORE) -> dict[str, Any]:
    status: dict[str, Any] = ray.get(cluster.find_store(spec, store).status.remote())
    return status


def test_channel_reads_match_ray_reads(spec: ClusterSpec) -> None:
    writer = Client(spec)
    for number in range(5):
        writer.put(f"/channel/k{number}", f"value {number}".encode())
    over_channel = Client(spec, data_center="dc-a")
    over_ray = Client(spec, data_center="dc-a", read_channel=False)
    before = _store_status(spec)["read_channel_reads"]
    for consistency in ("linearizable", "serializable", 5000):
        assert over_channel.range("/channel/", consistency=consistency) == over_ray.range(
            "/channel/", consistency=consistency)
    assert over_channel.get("/channel/k3").value == b"value 3"  # type: ignore[union-attr]
    assert over_channel.last_read["store"] == STORE
    assert _store_status(spec)["read_channel_reads"] - before == 4, "only the channel client's reads count"

    async def read_async() -> list[Any]:
        client = AsyncClient(spec, data_center="dc-a")
        return await asyncio.gather(*(client.get(f"/channel/k{number}") for number in range(5)))
    before = _store_status(spec)["read_channel_reads"]
    values = [kv.value for kv in asyncio.run(read_async())]
    assert values == [f"value {number}".encode() for number in range(5)]
    assert _store_status(spec)["read_channel_reads"] - before == 5
    over_channel.close()


def test_client_finds_restarted_store(spec: ClusterSpec) -> None:
    client = Client(spec, data_center="dc-a", timeout_s=30)
    client.put("/channel/restart", b"before")
    assert client.get("/channel/restart").value == b"before"  # type: ignore[union-attr]
    old = _store_status(spec)["read_channel"]
    ray.kill(cluster.find_store(spec, STORE), no_restart=False)
    deadline = time.monotonic() + 30
    while True:
        try:
            if _store_status(spec)["read_channel"] not in ("", old):
                break
        except ray.exceptions.RayActorError:
            pass
        assert time.monotonic() < deadline, "the store did not come back"
        time.sleep(0.2)
    client.put("/channel/restart", b"after")
    assert client.get("/channel/restart").value == b"after"  # type: ignore[union-attr]
    assert client.last_read["store"] == STORE
    assert _store_status(spec)["read_channel_reads"] >= 1, "the read reached the restarted store's channel"


def test_store_without_channel_uses_ray(spec: ClusterSpec) -> None:
    client = Client(spec, data_center="dc-b")
    client.put("/channel/fallback", b"x")
    # A store whose socket could not listen names no endpoint.
    assert client._channels is not None
    client._channels.endpoints._known["dc-b-s1"] = None
    before = _store_status(spec, "dc-b-s1")["read_channel_reads"]
    assert client.get("/channel/fallback").value == b"x"  # type: ignore[union-attr]
    assert _store_status(spec, "dc-b-s1")["read_channel_reads"] == before


def test_store_rejects_wrong_secret(spec: ClusterSpec) -> None:
    host, port = _store_status(spec, "dc-c-s1")["read_channel"].rsplit(":", 1)
    assert host == "127.0.0.1", "the local cluster listens on loopback only"
    client_nonce = b"n" * NONCE_BYTES
    with socket.create_connection((host, int(port)), timeout=5) as connection:
        connection.sendall(pack_frame([PROTOCOL, client_nonce]))
        challenge = _receive_frame(connection)
        connection.sendall(pack_frame([proof(b"not the secret", b"client", client_nonce, challenge[2])]))
        rejection = _receive_frame(connection)
        assert connection.recv(1) == b"", "the store closes the connection"
    assert rejection[1] == ""
    assert "rejected the read connection" in rejection[2]
    assert _store_status(spec, "dc-c-s1")["read_channel_rejected"] == 1
    client = Client(spec, data_center="dc-c")
    client.put("/channel/after-rejection", b"ok")
    assert client.get("/channel/after-rejection").value == b"ok"  # type: ignore[union-attr]


def _receive_frame(connection: socket.socket) -> Any:
    data = b""
    while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
        part = connection.recv(4096)
        assert part, "the store closed the connection early"
        data += part
    return msgpack.unpackb(data[4:], raw=False)
