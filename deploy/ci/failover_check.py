#!/usr/bin/env python3
"""Failover checks of a deploy/local-cluster cluster through nginx (nodes with --auth none).

    failover_check.py kill     # a node killed under a connected client
    failover_check.py drain    # SIGTERM: /readyz 503 first, then close 1001, then exit
    failover_check.py rolling  # a rolling restart of every node under traffic

Both read the cluster from $LOCAL_CLUSTER_DIR/cluster.env (default .local-cluster) and
drive it with deploy/local-cluster. Clients connect from loopback addresses 127.0.X.1 (ip_hash
hashes the first three octets, so different X reach different nodes).

kill: a receiver on node A and a publisher on another node join one room; node A is killed
(SIGKILL); the publisher publishes while the receiver is away; the receiver reconnects
through nginx from the same address (nginx moves it to a live node), rejoins with `since`
and must get `recovered: true` and exactly the missed messages, in order. Node A is started
again at the end.

drain: a client through nginx sits on node A; node A gets SIGTERM; its /readyz must answer
503 while the client is still open, the client must be closed with 1001, and the process
must exit by itself within --drain-timeout. Node A is started again at the end.

rolling: a publisher publishes with ids (resending unacknowledged ones after a reconnect, as
the protocol allows) while `deploy/local-cluster rolling-restart` drains and restarts every
node; a receiver reconnects and rejoins with `since` whenever it is closed. Every message the
cluster acknowledged must reach the receiver exactly once (by offset), in offset order.

Prints one JSON line; exit status 0 when the check held. Every wait is bounded.
"""

import asyncio
import json
import os
import random
import subprocess
import sys
import time
import uuid

from websockets.asyncio.client import connect

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STATE = os.environ.get("LOCAL_CLUSTER_DIR", os.path.join(REPO, ".local-cluster"))
LOCAL_CLUSTER = os.path.join(REPO, "deploy", "local-cluster")
T = 5.0  # seconds for any single expected reply


def cluster_env():
    env = {}
    with open(os.path.join(STATE, "cluster.env")) as f:
        for line in f:
            k, _, v = line.strip().partition("=")
            env[k] = v.strip('"')
    return env


def local_cluster(*args, timeout=120):
    r = subprocess.run([LOCAL_CLUSTER, *args], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "LOCAL_CLUSTER_DIR": STATE})
    if r.returncode != 0:
        raise RuntimeError(f"local-cluster {' '.join(args)} failed: {r.stderr[-800:]}")
    return r.stdout


class Client:
    """One protocol connection from a fixed source address, with a frame inbox."""

    def __init__(self, url, source):
        self.url, self.source = url, source
        self.epochs = {}
        self.ws = None
        self.node = None
        self.inbox = asyncio.Queue()
        self.reader = None
        self.closed = asyncio.Event()

    async def open(self, tries=40):
        last = None
        for _ in range(tries):  # bounded: nginx may need a moment to skip a dead node
            try:
                self.ws = await connect(self.url, subprotocols=["roomcast.v1.json"], open_timeout=T,
                                        ping_interval=None, local_addr=(self.source, 0))
                break
            except Exception as e:  # refused or 502 while a node goes away
                last = e
                await asyncio.sleep(0.1 + random.random() * 0.2)
        else:
            raise RuntimeError(f"cannot connect from {self.source}: {last}")
        self.closed = asyncio.Event()
        self.inbox = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())
        welcome = await self.expect(lambda m: m["type"] == "welcome", "welcome")
        self.node = welcome["node"]
        return welcome

    async def _read(self):
        try:
            async for raw in self.ws:
                await self.inbox.put(json.loads(raw))
        except Exception:
            pass
        finally:
            self.closed.set()

    async def send(self, msg):
        await self.ws.send(json.dumps(msg))

    async def next(self, timeout):
        """The next frame, or None after timeout; raises ConnectionError once closed and drained."""
        try:
            return self.inbox.get_nowait()
        except asyncio.QueueEmpty:
            pass
        if self.closed.is_set():
            raise ConnectionError(f"{self.source}: connection closed")
        get = asyncio.ensure_future(self.inbox.get())
        closed = asyncio.ensure_future(self.closed.wait())
        done, _ = await asyncio.wait({get, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        closed.cancel()
        if get in done:
            return get.result()
        get.cancel()
        if self.closed.is_set() and self.inbox.empty():
            raise ConnectionError(f"{self.source}: connection closed")
        return None

    async def expect(self, pred, what, timeout=T):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.source}: timed out waiting for {what}")
            m = await self.next(left)
            if m is None:
                continue
            if m.get("type") == "error" and m.get("code") != "rate_limited":
                raise RuntimeError(f"{self.source}: error while waiting for {what}: {m}")
            if pred(m):
                return m
            self.other(m)

    def other(self, m):
        """Frames nobody waited for (member_joined, messages seen early...)."""
        pass

    async def close(self):
        if self.ws is not None:
            try:
                await asyncio.wait_for(self.ws.close(), 2)
            except Exception:
                pass
        if self.reader is not None:
            self.reader.cancel()


async def join(c, room, since=None):
    msg = {"type": "join", "room": room}
    if since is not None:
        msg["since"] = since
    await c.send(msg)
    joined = await c.expect(lambda m: m["type"] == "joined" and m["room"] == room, f"joined {room}")
    c.epochs[room] = joined.get("epoch")
    return joined


async def client_on_other_node(url, avoid, first=2, last=40):
    for x in range(first, last):
        c = Client(url, f"127.0.{x}.1")
        await c.open()
        if c.node not in avoid:
            return c
        await c.close()
    raise RuntimeError(f"no source address reaches a node other than {avoid}")


async def check_kill():
    env = cluster_env()
    url = env["WS_URL"]
    room = "ci:kill:" + uuid.uuid4().hex[:8]
    rx = Client(url, "127.0.1.1")
    await rx.open()
    node_a = rx.node
    pub = await client_on_other_node(url, {node_a})
    await join(rx, room)
    await join(pub, room)

    async def publish(i):
        await pub.send({"type": "publish", "room": room, "event": "n", "data": i, "id": f"k{i}"})
        ack = await pub.expect(lambda m: m["type"] == "ack" and m.get("id") == f"k{i}", f"ack k{i}")
        return ack["offset"]

    await publish(0)
    first = await rx.expect(lambda m: m["type"] == "message" and m["data"] == 0, "message 0")
    since = {"offset": first["offset"], "epoch": rx.epochs[room]}

    index = node_a.split("-")[-1]
    local_cluster("kill-node", index, "KILL")
    await asyncio.wait_for(rx.closed.wait(), T)

    missed = [await publish(i) for i in range(1, 6)]

    await rx.close()
    rx2 = Client(url, "127.0.1.1")
    await rx2.open()
    moved_to = rx2.node
    joined = await join(rx2, room, since)
    got = [m["offset"] for m in joined.get("messages", [])]
    data = [m["data"] for m in joined.get("messages", [])]
    report = {"check": "kill", "killed": node_a, "publisher": pub.node, "reconnected_to": moved_to,
              "recovered": joined.get("recovered"), "missed_offsets": missed, "replayed": got}
    ok = (moved_to != node_a and joined.get("recovered") is True and got == missed and data == [1, 2, 3, 4, 5])
    # live delivery after recovery
    await publish(6)
    await rx2.expect(lambda m: m["type"] == "message" and m["data"] == 6, "message 6 after recovery")
    await rx2.close()
    await pub.close()
    local_cluster("start-node", index)
    report["ok"] = ok
    return report


async def check_drain():
    env = cluster_env()
    url = env["WS_URL"]
    ports = env["NODE_PORTS"].split()
    pids = env["NODE_PIDS"].split()
    # Several clients from one address: ip_hash puts them on one node, and the drain spreads
    # their closes over --drain-spread-ms, which leaves time to see /readyz 503 meanwhile.
    clients = [Client(url, "127.0.1.1") for _ in range(8)]
    for c in clients:
        await c.open()
    nodes = {c.node for c in clients}
    if len(nodes) != 1:
        raise RuntimeError(f"one address reached several nodes: {nodes}")
    node = clients[0].node
    index = int(node.split("-")[-1])
    port, pid = ports[index - 1], int(pids[index - 1])

    def readyz():
        import http.client
        try:
            h = http.client.HTTPConnection("127.0.0.1", int(port), timeout=1)
            h.request("GET", "/readyz")
            return h.getresponse().status
        except OSError:
            return None

    before = await asyncio.to_thread(readyz)
    os.kill(pid, 15)
    seen_503_while_open = False
    polls = 0
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not all(c.closed.is_set() for c in clients):
        st = await asyncio.to_thread(readyz)
        polls += 1
        if st == 503 and not all(c.closed.is_set() for c in clients):
            seen_503_while_open = True
        await asyncio.sleep(0.01)
    for c in clients:
        await asyncio.wait_for(c.closed.wait(), 15)
    codes = sorted({c.ws.close_code for c in clients})
    exited = False
    for _ in range(200):  # the drain ends when its last session is gone: exit follows
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            exited = True
            break
        await asyncio.sleep(0.1)
    local_cluster("start-node", str(index))
    report = {"check": "drain", "node": node, "readyz_before": before,
              "readyz_503_while_clients_open": seen_503_while_open, "close_codes": codes,
              "exited": exited, "readyz_polls": polls}
    report["ok"] = before == 200 and seen_503_while_open and codes == [1001] and exited
    return report


async def check_rolling():
    env = cluster_env()
    url = env["WS_URL"]
    room = "ci:rolling:" + uuid.uuid4().hex[:8]
    acked = {}  # id -> offset
    received = []  # offsets in arrival order
    recoveries = []
    stop = asyncio.Event()
    publisher_done = asyncio.Event()
    errors = []

    def done_receiving():
        last = max(acked.values()) if acked else 0
        return stop.is_set() and publisher_done.is_set() and bool(received) and max(received) >= last

    async def receiver():
        since = None
        for _ in range(50):  # bounded reconnects
            rx = Client(url, "127.0.1.1")
            try:
                await rx.open()
                joined = await join(rx, room, since)
                epoch = joined["epoch"]
                if since is not None:
                    recoveries.append({"node": rx.node, "recovered": joined.get("recovered"),
                                       "replayed": len(joined.get("messages", []))})
                    if not joined.get("recovered"):
                        errors.append(f"rejoin on {rx.node} not recovered: {joined}")
                else:
                    since = {"offset": joined["offset"], "epoch": epoch}
                for m in joined.get("messages", []):
                    received.append(m["offset"])
                    since = {"offset": m["offset"], "epoch": epoch}
                while not done_receiving():
                    m = await rx.next(0.5)  # ConnectionError when closed: reconnect
                    if m and m.get("type") == "message" and m.get("room") == room:
                        received.append(m["offset"])
                        since = {"offset": m["offset"], "epoch": epoch}
                await rx.close()
                return
            except Exception as e:
                if not isinstance(e, ConnectionError):
                    errors.append(f"receiver: {e}")
            await rx.close()
            await asyncio.sleep(0.05 + random.random() * 0.2)
        errors.append("receiver: too many reconnects")

    async def publisher():
        pub = Client(url, "127.0.2.1")
        i = 0
        pending = None
        for _ in range(60):  # bounded reconnects
            try:
                await pub.open()
                await join(pub, room)
                while not stop.is_set() or pending is not None:
                    if pending is None:
                        pending = f"r{i}"
                        i += 1
                    await pub.send({"type": "publish", "room": room, "event": "n", "data": pending, "id": pending})
                    ack = await pub.expect(lambda m: m["type"] == "ack" and m.get("id") == pending, f"ack {pending}")
                    if pending in acked and acked[pending] != ack["offset"]:
                        errors.append(f"resent {pending} got a new offset {ack['offset']} != {acked[pending]}")
                    acked[pending] = ack["offset"]
                    pending = None
                    await asyncio.sleep(0.03)
                await pub.close()
                publisher_done.set()
                return
            except Exception:
                await pub.close()
                await asyncio.sleep(0.05 + random.random() * 0.2)
        errors.append("publisher: too many reconnects")
        publisher_done.set()

    rx_task = asyncio.create_task(receiver())
    await asyncio.sleep(0.5)
    pub_task = asyncio.create_task(publisher())
    await asyncio.sleep(0.5)
    t0 = time.monotonic()
    await asyncio.to_thread(local_cluster, "rolling-restart", timeout=300)
    took = time.monotonic() - t0
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.wait_for(pub_task, 60)
    await asyncio.wait_for(rx_task, 30)

    dupes = len(received) - len(set(received))
    missing = sorted(set(acked.values()) - set(received))
    ordered = received == sorted(received)
    report = {"check": "rolling", "restart_seconds": round(took, 1), "acked": len(acked),
              "received": len(received), "duplicates": dupes, "missing_acked": missing[:20],
              "in_order": ordered, "recoveries": recoveries, "errors": errors[:10]}
    report["ok"] = bool(acked) and not missing and dupes == 0 and ordered and not errors and len(recoveries) >= 1
    return report


def main():
    checks = {"kill": check_kill, "drain": check_drain, "rolling": check_rolling}
    if len(sys.argv) != 2 or sys.argv[1] not in checks:
        print(__doc__, file=sys.stderr)
        return 2
    fn = checks[sys.argv[1]]
    try:
        report = asyncio.run(asyncio.wait_for(fn(), 400))
    except Exception as e:
        report = {"check": sys.argv[1], "ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(report))
    return 0 if report.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
