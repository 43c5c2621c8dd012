#!/usr/bin/env python3
"""Stalled clients: what a node holds, in its heap and in the kernel, while N clients
that stopped reading sit in a busy room, and how long until it lets them go.

N raw WebSocket clients join one room (reading while the others join) and then stop
reading; one publisher sends
`--rate` messages a second of `--payload` bytes into that room for `--duration` seconds
and reads its acks. Every second it prints: the node's RSS, the bytes queued in the
kernel's send buffers of the node's sockets (the `w` of `ss -tm`), the TCP memory of the
whole machine (/proc/net/sockstat, pages), and how many stalled connections the node still
holds. Loopback only; bounded by --duration.

    python3 loadtest/stalled/stalled.py --port 8080 --pid <node pid> -n 1000
"""
import argparse, asyncio, base64, json, os, re, subprocess, time

def frame(text: str) -> bytes:
    """A masked client text frame."""
    data = text.encode()
    mask = os.urandom(4)
    n = len(data)
    head = bytes([0x81])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))

async def open_ws(port: int, source: str):
    r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    key = base64.b64encode(os.urandom(16)).decode()
    w.write(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n")[0]:
        raise RuntimeError(head.decode(errors="replace"))
    return r, w

async def read_frames(r, stop):
    """Reads and discards server frames until `stop` or the end."""
    while not stop.is_set():
        b = await r.read(65536)
        if not b:
            return

def kernel_queued(port: int):
    """(bytes queued in the node's send buffers, established connections on the port)."""
    out = subprocess.run(["ss", "-tmnH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True).stdout
    queued = sum(int(m) for m in re.findall(r"\bw(\d+)", out))
    plain = subprocess.run(["ss", "-tnH", "state", "established", f"( sport = :{port} )"],
                           capture_output=True, text=True).stdout
    return queued, sum(1 for l in plain.splitlines() if l.strip())

def sockstat_tcp_pages():
    for line in open("/proc/net/sockstat"):
        if line.startswith("TCP:"):
            f = line.split()
            return int(f[f.index("mem") + 1])
    return 0

def rss_kib(pid: int):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    return 0

async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--payload", type=int, default=1024)
    ap.add_argument("--duration", type=float, default=30)
    a = ap.parse_args()
    base_rss = rss_kib(a.pid)
    base_tcp = sockstat_tcp_pages()
    stalled = []
    for i in range(a.n):
        src = f"127.0.{1 + i // 250}.{1 + i % 250}"
        r, w = await open_ws(a.port, src)
        w.write(frame(json.dumps({"type": "join", "room": "stall", "id": "j"})))
        await w.drain()
        got = b""
        while b'"joined"' not in got:
            got += await r.read(4096)
        # Read on (the member events of the later joins) until every client is in.
        stalled.append((r, w, asyncio.create_task(read_frames(r, asyncio.Event()))))
    for _, _, t in stalled:
        t.cancel()  # from here on, nobody reads
    pr, pw = await open_ws(a.port, "127.0.9.1")
    stop = asyncio.Event()
    reader = asyncio.create_task(read_frames(pr, stop))
    pad = "x" * a.payload
    print("t_s\trss_mib\tkernel_send_queued_mib\tmachine_tcp_mem_mib\tconnections_held")
    t0 = time.monotonic()
    sent = 0
    next_sample = 0.0
    while (el := time.monotonic() - t0) < a.duration:
        due = int(el * a.rate)
        while sent < due:
            pw.write(frame(json.dumps({"type": "publish", "room": "stall", "event": "e", "data": pad})))
            sent += 1
        await pw.drain()
        if el >= next_sample:
            q, held = kernel_queued(a.port)
            print(f"{el:.0f}\t{rss_kib(a.pid) / 1024:.1f}\t{q / 2**20:.1f}\t"
                  f"{(sockstat_tcp_pages() - base_tcp) * 4096 / 2**20:.1f}\t{max(held - 1, 0)}", flush=True)
            next_sample += 1.0
        await asyncio.sleep(0.005)
    stop.set()
    reader.cancel()
    print(json.dumps({"published": sent, "rss_before_mib": round(base_rss / 1024, 1)}))

asyncio.run(main())
