"""Process helpers the Python benchmark scripts share: scripts/bench, scripts/callgrind,
loadtest/scaling/run.py (and, through scripts/bench, loadtest/joins/run).

Not a program. A script imports it from this directory, whatever its working directory:

    sys.dont_write_bytecode = True  # no __pycache__ beside the scripts
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import harness

What it holds: free loopback ports, processes started with their output in a log file and
stopped by their own handle (SIGTERM, then SIGKILL after a grace), every one still running
stopped when the script exits, waiting for a condition with a deadline, and an HTTP probe.
"""

import atexit
import signal
import socket
import subprocess
import time
import urllib.request

# Every process started through start() and not yet stopped; stopped at exit. Scripts that
# start a process some other way may append it here too.
PROCS = []


def free_port():
    """A free TCP port on 127.0.0.1, picked by the kernel (start what listens on it soon)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start(cmd, logfile, env=None, cwd=None, preexec_fn=None):
    """Starts cmd with stdout and stderr in logfile; remembered in PROCS."""
    f = open(logfile, "w")
    p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                         preexec_fn=preexec_fn)
    PROCS.append(p)
    return p


def stop(p, grace=5.0):
    """SIGTERM, up to grace seconds to exit, then SIGKILL; forgets p."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
    if p in PROCS:
        PROCS.remove(p)


@atexit.register
def _cleanup():
    for p in list(PROCS):
        try:
            stop(p, 3)
        except Exception:
            pass


def wait_for(pred, timeout, what):
    """Polls pred every 0.1 s until it is true; RuntimeError naming what after timeout s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def http_ok(url, timeout=1):
    """Whether GET url answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except Exception:
        return False
