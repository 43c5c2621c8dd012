#!/usr/bin/env python3
"""Scaling curve (issue 12): N nodes on one Redis, pattern vs rooms mode, two placements.

For each node count N (default 1, 2, 4, 6) and each mode (`--bus-subscribe pattern` and
`rooms`) it starts one Redis and N release nodes on loopback, then runs one
`roomcast-loadgen fanout` per node, at the same per-node publish rate, in two placements:

  local   generator k connects only to node k: its 25 rooms (6 receivers each) and its
          publishers all sit on node k, as nginx ip_hash puts a room's members together
          when they share an address block. No room is held by two nodes.
  spread  generator k's receivers go round-robin over all N nodes (25 rooms, 6 members:
          every room has members on every node) and its publishers sit on node k.

So every node carries the same clients and the same publish rate whatever N is; the
cluster's rate is N x the per-node rate. Per node it reports, over the publishing window:
bus messages received per second (`roomcast_bus_messages_received_total`), messages
received for rooms it does not hold (`roomcast_bus_unwanted_room_messages_total`), and CPU
(utime + stime from /proc) per second and per bus message. Rates step up (per node) until a
step misses the SLO (no loss, p99 <= 100 ms, the asked rate reached): the last step within
it is the cluster's highest publish rate within the SLO.

The machine has 2 cores shared with the generator (and maybe other work): CPU time per
message is the figure to compare, wall-clock rates are the machine's. `uptime` load
averages are recorded before and after every (N, mode) block.

  loadtest/scaling/run.py                       # 1,2,4,6 nodes, rates 250..4000 per node
  loadtest/scaling/run.py --nodes 1,2 --rates 250 --duration 3    # quick
  loadtest/scaling/run.py --modes rooms,cluster --rates 250,1000,4000   # one Redis vs 3 shards

Env: ROOMCAST_BIN, LOADGEN_BIN (default target/release/...). Writes JSON to
target/bench/scaling-<time>.json and prints Markdown tables. Loopback only; every run is
bounded (loadgen duration + drain, process timeouts).
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HZ = os.sysconf("SC_CLK_TCK")
sys.dont_write_bytecode = True  # no __pycache__ beside the scripts
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from harness import PROCS, free_port, start, stop, wait_for  # noqa: E402
ROOMS_PER_GEN = 25  # coprime with 2, 4 and 6 (25 = 1 mod each): spread covers every node
MEMBERS = 6  # at least the most nodes, so that spread puts every room on every node
PUBLISHERS_PER_GEN = 5


def log(*a):
    print("[scaling]", *a, file=sys.stderr, flush=True)






def http(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except Exception:
        return None, ""


def metric(port, name):
    _, body = http(f"http://127.0.0.1:{port}/metrics")
    for line in body.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == name:
            return float(parts[1])
    return 0.0


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / HZ


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class Nodes:
    """One Redis and N nodes in `mode` (pattern, rooms), or, for mode `cluster`, a Redis
    Cluster of 3 primaries and 3 replicas (deploy/redis-cluster) and N nodes on
    --redis-cluster-urls; then Redis CPU is the sum over the primaries, each primary's share
    is kept too (the shards' balance), and the replicas' CPU is reported apart."""

    def __init__(self, n, mode, args, tmp):
        self.cluster_dir = None
        self.redis_pids = []
        self.replica_pids = []
        if mode == "cluster":
            self.cluster_dir = os.path.join(tmp, f"redis-cluster-{n}")
            subprocess.run([os.path.join(ROOT, "deploy/redis-cluster"), "start", self.cluster_dir], check=True,
                           timeout=120)
            env = {}
            with open(os.path.join(self.cluster_dir, "cluster.env")) as f:
                for line in f:
                    k, _, v = line.strip().partition("=")
                    env[k] = v.strip('"')
            seeds = env["REDIS_CLUSTER_URLS"]
            pids, ports = env["REDIS_CLUSTER_PIDS"].split(), env["REDIS_CLUSTER_PORTS"].split()
            # Redis CPU: the primaries (they run the publish scripts and the sharded pub/sub).
            for pid, port in zip(pids, ports):
                role = subprocess.run(["redis-cli", "-p", port, "ROLE"], capture_output=True, text=True,
                                      timeout=10).stdout.split()
                if role and role[0] == "master":
                    self.redis_pids.append(int(pid))
                else:
                    self.replica_pids.append(int(pid))
            bus = ["--redis-cluster-urls", seeds]
        else:
            self.redis_port = free_port()
            self.redis = start(["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--client-output-buffer-limit", "pubsub 64mb 16mb 60"],
                               os.path.join(tmp, "redis.log"))
            wait_for(lambda: subprocess.run(["redis-cli", "-p", str(self.redis_port), "ping"], capture_output=True,
                                            text=True).stdout.strip() == "PONG", 10, "redis")
            self.redis_pids = [self.redis.pid]
            bus = ["--redis-url", f"redis://127.0.0.1:{self.redis_port}", "--bus-subscribe", mode]
        self.ports, self.procs = [], []
        try:
            self._start_nodes(n, bus, args, tmp)
        except BaseException:
            self.stop()
            raise

    def _start_nodes(self, n, bus, args, tmp):
        for i in range(n):
            port = free_port()
            self.procs.append(start([args.roomcast_bin, "--auth", "none", *bus, "--listen", f"127.0.0.1:{port}",
                                     "--node-id", f"scale-{i}", "--rate-limit", "1000000",
                                     "--rate-burst", "1000000", "--max-connections", "100000", "--log-level", "warn"],
                                    os.path.join(tmp, f"node{i}.log")))
            self.ports.append(port)
        for port, p in zip(self.ports, self.procs):
            wait_for(lambda: p.poll() is None and http(f"http://127.0.0.1:{port}/readyz")[0] == 200, 30, "node")

    def snapshot(self):
        return [{"cpu": cpu_s(p.pid), "bus": metric(port, "roomcast_bus_messages_received_total"),
                 "unwanted": metric(port, "roomcast_bus_unwanted_room_messages_total")}
                for port, p in zip(self.ports, self.procs)] + [{"redis_cpu": [cpu_s(p) for p in self.redis_pids],
                                                                   "replica_cpu": [cpu_s(p) for p in self.replica_pids]}]

    def stop(self):
        for p in self.procs:
            stop(p)
        if self.cluster_dir:
            subprocess.run([os.path.join(ROOT, "deploy/redis-cluster"), "stop", self.cluster_dir], timeout=60)
        elif getattr(self, "redis", None):
            stop(self.redis)


def run_step(nodes, placement, per_node_rate, args, tmp, tag):
    n = len(nodes.ports)
    urls = [f"ws://127.0.0.1:{p}" for p in nodes.ports]
    gens = []
    for k in range(n):
        if placement == "local":
            target = urls[k]
        else:  # spread: publishers on node k (loadgen puts them on the first URL), receivers round-robin
            target = ",".join(urls[k:] + urls[:k])
        out = os.path.join(tmp, f"{tag}-gen{k}.json")
        errf = os.path.join(tmp, f"{tag}-gen{k}.log")
        cmd = [args.loadgen_bin, "--url", target, "--threads", "1", "--out", out, "--room-prefix",
               f"s{tag}-g{k}-", "fanout", "--receivers", str(ROOMS_PER_GEN * MEMBERS), "--rooms",
               str(ROOMS_PER_GEN), "--publishers", str(PUBLISHERS_PER_GEN), "--rate", str(per_node_rate),
               "--duration", str(args.duration), "--drain", "5"]
        gens.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(errf, "w")), out, errf))
        PROCS.append(gens[-1][0])
    # The window: from every generator publishing to every generator done.
    deadline = time.time() + 120
    while time.time() < deadline:
        if all("publishing" in open(e).read() or g.poll() is not None for g, _, e in gens):
            break
        time.sleep(0.05)
    # loadgen settles joins for 0.5 s before it starts publishing; the generators started
    # within about a second of each other. Measure inside the publishing time only (no
    # joins, no closes: member events ride the room channels too).
    time.sleep(0.6)
    s0, t0 = nodes.snapshot(), time.time()
    time.sleep(max(1.0, args.duration - 1.5))
    s1, wall = nodes.snapshot(), time.time() - t0
    for g, _, _ in gens:
        try:
            g.wait(args.duration * 3 + 60)
        except subprocess.TimeoutExpired:
            g.kill()
            g.wait(5)
        PROCS.remove(g)
    reps = []
    for g, out, errf in gens:
        try:
            with open(out) as f:
                reps.append(json.load(f))
        except Exception:
            reps.append({"ok": False, "error": open(errf).read()[-500:]})
    r0, r1 = s0.pop(), s1.pop()
    shard_cpu = [b - a for a, b in zip(r0["redis_cpu"], r1["redis_cpu"])]
    replica_cpu = sum(b - a for a, b in zip(r0["replica_cpu"], r1["replica_cpu"]))
    redis_cpu = sum(shard_cpu)
    per_node = []
    for a, b in zip(s0, s1):
        bus, cpu = b["bus"] - a["bus"], b["cpu"] - a["cpu"]
        per_node.append({"bus_msgs_per_s": round(bus / wall, 1), "unwanted_per_s": round((b["unwanted"] - a["unwanted"]) / wall, 1),
                         "cpu_ms_per_s": round(cpu * 1000 / wall, 1),
                         "cpu_us_per_bus_msg": round(cpu * 1e6 / bus, 2) if bus else None})
    published = sum(r.get("published", 0) or 0 for r in reps)
    p99 = max(((r.get("latency") or {}).get("p99_us") or 1e12) for r in reps)
    rate_ok = all((r.get("publish_rate") or 0) >= 0.95 * per_node_rate for r in reps)
    ok = all(r.get("ok") for r in reps)
    res = {"placement": placement, "per_node_rate": per_node_rate, "cluster_rate": per_node_rate * n,
           "published": published, "lost": sum(r.get("lost", 0) or 0 for r in reps),
           "duplicates": sum(r.get("duplicates", 0) or 0 for r in reps), "p99_us": p99, "ok": ok,
           "within_slo": ok and p99 <= 100_000 and rate_ok, "window_s": round(wall, 2), "nodes": per_node,
           "redis_cpu_ms_per_s": round(redis_cpu * 1000 / wall, 1),
           "redis_cpu_ms_per_s_per_primary": [round(c * 1000 / wall, 1) for c in shard_cpu],
           "redis_cpu_us_per_msg": round(redis_cpu * 1e6 / (wall * per_node_rate * n), 2),
           # Replicas (Redis Cluster only): replication of the primaries' writes.
           "replica_cpu_ms_per_s": round(replica_cpu * 1000 / wall, 1),
           "redis_cpu_us_per_msg_with_replicas": round((redis_cpu + replica_cpu) * 1e6 / (wall * per_node_rate * n), 2),
           "generator_cpu_s": round(sum(r.get("generator_cpu_s", 0) or 0 for r in reps), 2)}
    mean = lambda key: round(sum(x[key] or 0 for x in per_node) / n, 1)
    log(f"  {placement} {per_node_rate}/node x{n}: ok={ok} p99={p99 / 1000:.1f}ms lost={res['lost']} "
        f"bus/node={mean('bus_msgs_per_s')}/s cpu/node={mean('cpu_ms_per_s')}ms/s redis={res['redis_cpu_ms_per_s']}ms/s "
        f"slo={res['within_slo']}")
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="1,2,4,6")
    ap.add_argument("--modes", default="pattern,rooms",
                    help="from pattern, rooms, cluster (a 3-primary Redis Cluster: needs a node built with "
                         "--redis-cluster-urls)")
    ap.add_argument("--placements", default="local,spread")
    ap.add_argument("--rates", default="250,500,1000,2000,4000", help="publish rates per node, rising")
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--out", default=os.path.join(ROOT, "target/bench"))
    args = ap.parse_args()
    args.roomcast_bin = os.environ.get("ROOMCAST_BIN", os.path.join(ROOT, "target/release/roomcast"))
    args.loadgen_bin = os.environ.get("LOADGEN_BIN", os.path.join(ROOT, "target/release/roomcast-loadgen"))
    for b in (args.roomcast_bin, args.loadgen_bin):
        if not os.access(b, os.X_OK):
            sys.exit(f"{b} not found: cargo build --release -p roomcast-gateway -p roomcast-loadgen")
    args.duration = min(max(args.duration, 3.0), 60.0)
    node_counts = [int(x) for x in args.nodes.split(",") if x]
    if any(n < 1 or n > 8 for n in node_counts):
        sys.exit("--nodes: 1..8 each")
    rates = [float(x) for x in args.rates.split(",") if x][:8]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    report = {"date": stamp, "command": " ".join(sys.argv), "nproc": os.cpu_count(),
              "git": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True).stdout.strip(),
              "layout": {"rooms_per_node": ROOMS_PER_GEN, "members": MEMBERS, "publishers_per_node": PUBLISHERS_PER_GEN,
                         "duration_s": args.duration}, "runs": []}
    tmp = tempfile.mkdtemp(prefix="roomcast-scaling-")
    try:
        for n in node_counts:
            for mode in args.modes.split(","):
                before = loadavg()
                nodes = Nodes(n, mode, args, tmp)
                try:
                    for placement in args.placements.split(","):
                        if n == 1 and placement == "spread":
                            continue  # the same as local with one node
                        steps = []
                        for r in rates:
                            steps.append(run_step(nodes, placement, r, args, tmp, f"{n}{mode[0]}{placement[0]}{int(r)}"))
                            if not steps[-1]["within_slo"]:
                                break
                        best = None
                        for s in steps:
                            if not s["within_slo"]:
                                break
                            best = s
                        report["runs"].append({"nodes": n, "mode": mode, "placement": placement, "steps": steps,
                                               "best_cluster_rate": best and best["cluster_rate"],
                                               "load_before": before, "load_after": loadavg()})
                finally:
                    nodes.stop()
    finally:
        for p in list(PROCS):
            stop(p)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"scaling-{stamp}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print(table(report))
    log(f"wrote {path} (logs in {tmp})")


def table(report):
    out = ["| nodes | mode | placement | cluster msg/s | bus msgs received per node, /s | of which for rooms it does not hold "
           "| CPU per node, ms/s | Redis CPU per message, µs | cluster's highest rate within the SLO | load avg before → after |",
           "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for run in report["runs"]:
        first = run["steps"][0]
        nn = run["nodes"]
        mean = lambda key: sum(x[key] or 0 for x in first["nodes"]) / nn
        best = run["best_cluster_rate"]
        out.append(f"| {nn} | {run['mode']} | {run['placement']} | {first['cluster_rate']:.0f} | {mean('bus_msgs_per_s'):.0f} "
                   f"| {mean('unwanted_per_s'):.0f} | {mean('cpu_ms_per_s'):.1f} | {first['redis_cpu_us_per_msg']:.1f} | {best and f'{best:.0f} msg/s' or 'none'} "
                   f"| {run['load_before']} → {run['load_after']} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
