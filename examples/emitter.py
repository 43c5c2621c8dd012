#!/usr/bin/env python3
"""Publish to a roomcast room from any backend by writing the bus envelope to Redis.

The emitter path of docs/protocol.md section 6 (like Socket.IO's redis-emitter): every node
delivers the message to its members. Such messages carry no offset (no history, no
recovery); use POST /api/publish when you need those.

    pip install redis msgpack   (examples/test puts them in a venv of its own)
    python3 examples/emitter.py redis://127.0.0.1:6379 lobby '{"text":"hello"}'
"""
import json
import sys
import time

import msgpack
import redis


def emit(url: str, room: str, event: str, data, prefix: str = "roomcast") -> int:
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
    r = redis.Redis.from_url(url)
    # Returns how many nodes received it.
    return r.publish(f"{prefix}:room:{room}", msgpack.packb(envelope))


if __name__ == "__main__":
    url = sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379"
    room = sys.argv[2] if len(sys.argv) > 2 else "lobby"
    data = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {"hello": "from python"}
    prefix = sys.argv[4] if len(sys.argv) > 4 else "roomcast"
    print(emit(url, room, "py", data, prefix))
