#!/usr/bin/env python3
"""Publish to a roomcast room (or a user) from any backend by writing the bus envelope to Redis.

The emitter path of docs/protocol.md section 6 (like Socket.IO's redis-emitter): every node
that holds the room (or the user) delivers the message to its members. Such messages carry
no offset (no history, no recovery); use POST /api/publish when you need those.

One Redis (the nodes run with --redis-url, in `pattern` or `rooms` mode): PUBLISH to
`<prefix>:room:<room>` / `<prefix>:user:<user>`. Redis Cluster (the nodes run with
--redis-cluster-urls): SPUBLISH to `<prefix>:room:{<room>}` / `<prefix>:user:{<user>}`
(section 6b: the hash tag puts the channel in the room's slot) through a cluster client,
which sends it to the shard that owns that slot. The cluster path is taken with --cluster
or when ROOMCAST_REDIS_CLUSTER_URLS is set (comma-separated seed URLs, as the nodes take).

    pip install redis msgpack   (examples/test puts them in a venv of its own)
    python3 examples/emitter.py redis://127.0.0.1:6379 lobby '{"text":"hello"}'
    python3 examples/emitter.py --cluster redis://127.0.0.1:7000,redis://127.0.0.1:7001 lobby '{"text":"hi"}'
    python3 examples/emitter.py --user alice redis://127.0.0.1:6379 - '{"text":"psst"}'
"""
import argparse
import json
import os
import time

import msgpack
import redis
from redis.cluster import ClusterNode, RedisCluster


def room_channel(prefix: str, room: str, cluster: bool) -> str:
    return f"{prefix}:room:{{{room}}}" if cluster else f"{prefix}:room:{room}"


def user_channel(prefix: str, user: str, cluster: bool) -> str:
    return f"{prefix}:user:{{{user}}}" if cluster else f"{prefix}:user:{user}"


def connect(urls: str, cluster: bool):
    """One client: a plain one for one Redis, a cluster client (slot map from the seeds,
    follows MOVED/ASK) for Redis Cluster."""
    seeds = [u.strip() for u in urls.split(",") if u.strip()]
    if not seeds:
        raise ValueError("no Redis URL given")
    if not cluster:
        return redis.Redis.from_url(seeds[0])
    nodes = []
    for u in seeds:
        c = redis.connection.parse_url(u)
        nodes.append(ClusterNode(c.get("host", "127.0.0.1"), c.get("port", 6379)))
    return RedisCluster(startup_nodes=nodes)


def _send(client, channel: str, envelope: dict, cluster: bool) -> int:
    payload = msgpack.packb(envelope)
    # Returns how many subscribers (nodes) received it; with SPUBLISH, those on the shard.
    if cluster:
        return client.spublish(channel, payload)
    return client.publish(channel, payload)


def _emit(url: str, cluster: bool, channel: str, envelope: dict) -> int:
    """Connects, publishes one envelope on `channel`, and closes."""
    client = connect(url, cluster)
    try:
        return _send(client, channel, envelope, cluster)
    finally:
        client.close()


def emit(url: str, room: str, event: str, data, prefix: str = "roomcast", cluster: bool = False) -> int:
    """A `message` to every member of `room`."""
    envelope = {
        "v": 1,
        "node": "emitter-py",
        "msg": {
            "type": "message",
            "room": room,
            "event": event,
            "data": data,
            "from": "backend",
            "ts": int(time.time() * 1000),
        },
    }
    return _emit(url, cluster, room_channel(prefix, room, cluster), envelope)


def emit_to_user(url: str, user: str, event: str, data, prefix: str = "roomcast", cluster: bool = False) -> int:
    """A `direct` message to every connection of `user`."""
    envelope = {
        "v": 1,
        "node": "emitter-py",
        "msg": {
            "type": "direct",
            "to": user,
            "from": "backend",
            "event": event,
            "data": data,
            "ts": int(time.time() * 1000),
        },
    }
    return _emit(url, cluster, user_channel(prefix, user, cluster), envelope)


if __name__ == "__main__":
    env_cluster = os.environ.get("ROOMCAST_REDIS_CLUSTER_URLS", "")
    ap = argparse.ArgumentParser(description="Publish to a roomcast room or user through Redis.")
    ap.add_argument("--cluster", action="store_true", help="Redis Cluster: SPUBLISH to the hash-tagged channel")
    ap.add_argument("--user", help="send a direct message to this user instead of a room message")
    ap.add_argument("url", nargs="?", default="",
                    help="redis:// URL (with --cluster: comma-separated seed URLs; default: ROOMCAST_REDIS_CLUSTER_URLS, else redis://127.0.0.1:6379)")
    ap.add_argument("room", nargs="?", default="lobby", help="the room ('-' with --user)")
    ap.add_argument("data", nargs="?", default='{"hello": "from python"}', help="JSON payload")
    ap.add_argument("prefix", nargs="?", default="roomcast")
    a = ap.parse_args()
    use_cluster = a.cluster or bool(env_cluster)
    url = a.url or env_cluster or "redis://127.0.0.1:6379"
    payload = json.loads(a.data)
    if a.user:
        print(emit_to_user(url, a.user, "py", payload, a.prefix, use_cluster))
    else:
        print(emit(url, a.room, "py", payload, a.prefix, use_cluster))
