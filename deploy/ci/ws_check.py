#!/usr/bin/env python3
"""A small WebSocket client check of a roomcast cluster behind nginx (nodes with --auth none).

    ws_check.py --url ws://HOST:PORT/ws [--source ADDR ...] [--min-nodes N] [--timeout S]

Opens one connection per --source address (the local address to connect from; none: one
connection from the default address), reads each `welcome` to learn which node nginx chose,
and keeps one connection per distinct node. At least --min-nodes distinct nodes must show
up, and a second connection from the same address must reach the same node (ip_hash). Then every kept connection joins one fresh room, the first publishes with `echo` and an
`id`, and every connection, on every node, must receive that `message` (same offset), while
the publisher also gets the `ack`. Prints one JSON line with what it saw; exit status 0 when
all of it held, 1 otherwise. Every wait is bounded by --timeout seconds.

Used by scripts/test-deploy (local cluster) and deploy/ci-compose-test (compose cluster).
"""

import argparse
import asyncio
import json
import sys
import uuid

try:
    from websockets.asyncio.client import connect
except ImportError:  # websockets < 13
    from websockets import connect  # type: ignore


async def recv_json(ws, timeout):
    raw = await asyncio.wait_for(ws.recv(), timeout)
    return json.loads(raw)


async def recv_until(ws, pred, timeout, what):
    """Receive frames until one satisfies pred; other frames (member_joined...) are skipped."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for _ in range(1000):
        left = deadline - loop.time()
        if left <= 0:
            break
        try:
            msg = await recv_json(ws, left)
        except asyncio.TimeoutError:
            break
        if msg.get("type") == "error":
            raise RuntimeError(f"{what}: server error {msg}")
        if pred(msg):
            return msg
    raise RuntimeError(f"timed out waiting for {what}")


async def open_conn(url, source, timeout):
    kwargs = {"subprotocols": ["roomcast.v1.json"], "open_timeout": timeout, "ping_interval": None}
    if source:
        kwargs["local_addr"] = (source, 0)
    ws = await connect(url, **kwargs)
    welcome = await recv_until(ws, lambda m: m.get("type") == "welcome", timeout, "welcome")
    return ws, welcome


async def run(args):
    report = {"url": args.url, "connections": [], "nodes": [], "ok": False}
    sources = args.source or [None]
    by_node = {}
    opened = []
    try:
        for src in sources:
            ws, welcome = await open_conn(args.url, src, args.timeout)
            opened.append(ws)
            node = welcome.get("node")
            report["connections"].append({"source": src, "node": node, "user": welcome.get("user")})
            if node not in by_node:
                by_node[node] = ws
        report["nodes"] = sorted(str(n) for n in by_node)
        # ip_hash: a second connection from the same address lands on the same node.
        if args.source:
            for entry in report["connections"][:4]:
                ws2, welcome2 = await open_conn(args.url, entry["source"], args.timeout)
                opened.append(ws2)
                if welcome2.get("node") != entry["node"]:
                    report["error"] = (f"{entry['source']} reached {entry['node']}, then "
                                       f"{welcome2.get('node')}: ip_hash did not keep it on one node")
                    return report
            report["same_address_same_node"] = True
        if len(by_node) < args.min_nodes:
            report["error"] = f"only {len(by_node)} distinct node(s) behind nginx, wanted {args.min_nodes}"
            return report

        room = "ci:" + uuid.uuid4().hex[:12]
        members = list(by_node.items())
        for node, ws in members:
            await ws.send(json.dumps({"type": "join", "room": room}))
            await recv_until(ws, lambda m: m.get("type") == "joined" and m.get("room") == room,
                             args.timeout, f"joined on {node}")

        pub_node, pub = members[0]
        payload = {"check": uuid.uuid4().hex}
        await pub.send(json.dumps({"type": "publish", "room": room, "event": "ci.check",
                                   "data": payload, "id": "ci-1", "echo": True}))
        got = {}

        async def wait_message(node, ws, publisher):
            want_ack = publisher
            message = None
            for _ in range(1000):
                m = await recv_until(
                    ws, lambda m: m.get("type") in ("message", "ack"), args.timeout,
                    f"message on {node}")
                if m["type"] == "ack" and m.get("id") == "ci-1":
                    want_ack = False
                    report["ack_offset"] = m.get("offset")
                elif m["type"] == "message" and m.get("room") == room and m.get("data") == payload:
                    message = m
                if message is not None and not want_ack:
                    return message

        results = await asyncio.gather(
            *(wait_message(node, ws, ws is pub) for node, ws in members), return_exceptions=True)
        for (node, _), res in zip(members, results):
            if isinstance(res, Exception):
                report["error"] = f"{node}: {res}"
                return report
            got[str(node)] = res.get("offset")
        report["received"] = got
        offsets = set(got.values())
        if len(offsets) != 1:
            report["error"] = f"members saw different offsets: {got}"
            return report
        if report.get("ack_offset") is not None and report["ack_offset"] not in offsets:
            report["error"] = f"ack offset {report['ack_offset']} differs from delivered {offsets}"
            return report
        report["ok"] = True
        return report
    finally:
        for ws in opened:
            try:
                await asyncio.wait_for(ws.close(), 2)
            except Exception:
                pass


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--source", action="append", help="local address to connect from (repeatable)")
    p.add_argument("--min-nodes", type=int, default=1)
    p.add_argument("--timeout", type=float, default=5.0)
    args = p.parse_args()
    try:
        report = asyncio.run(asyncio.wait_for(run(args), args.timeout * 20))
    except Exception as e:  # connection refused, timeouts, protocol surprises
        report = {"url": args.url, "ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(report))
    return 0 if report.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
