#!/usr/bin/env python3
"""Abuse scenarios for examples/http_server (scripts/soak).

Usage:
  http_abuse.py run SERVER --backend NAME [--only SCENARIO ...]
  http_abuse.py client-KIND ...      (a load generator; started by 'run')

'run' starts the server binary once per scenario on a free loopback port,
drives it with load generators running in processes of their own (this
file, started again as client-halfreset, client-slowloris, client-normal,
client-noread or client-flood), watches the server through /proc/PID (open
descriptors, VmRSS, CPU time), and prints one line per scenario:

  PASS|FAIL <backend> <scenario>: <figures>[; failed: <checks>]

then "RESULT passed=N failed=N".  Scenarios:

  half-reset   10,000 connections in waves, each sending half a request
               head and then resetting: descriptors back to the baseline,
               RSS within +10% of its value after a warm-up, still answering.
  slowloris    500 clients trickling a head a byte a second: every one is
               answered 408 and closed by --head-ms (+ slack) while a
               keep-alive client's p99 latency stays under 50 ms.
  no-read      50 clients pipeline requests for large responses and never
               read: RSS growth stays under 50 x the per-connection cap,
               other clients are served; the half that close are dropped
               at once, the others by the server's 30 s send deadline.
  buffers      6,000 connections on one thread, which has 4,096 receive
               buffers, each holding half a head; then half send the rest
               (all answered within 5 s) and half reset: no deadlock in
               the server's line for buffers, descriptors return.
  flood        the server under RLIMIT_NOFILE 256 and 1,000 connections at
               once: no busy accept loop (CPU < 20% of a core while the
               flood holds), answers again once the flood is gone.

Every wait has a deadline; figures are measured, thresholds asserted.  A
client reports "READY {json}" when its load is in place and "DONE {json}"
at the end; the hold-type clients take their next step at a line on their
stdin and let go when it closes.
"""
import errno
import json
import os
import random
import re
import resource
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.abspath(__file__)
HOST = "127.0.0.1"
MIB = 1024 * 1024

# The server's limits that the thresholds are computed from
# (examples/http_server.c).
RECV_BUF = 16 * 1024  # a pooled receive buffer, and a response buffer
HEAD_BUF = 48 * 1024  # a head gathered over several receives
LINGER_MS = 2000      # the lingering close after an error response
RECV_BUFFERS = 4096   # receive buffers per thread (min(--max-conns, 4096))
SEND_TIMEOUT_MS = 30000  # the deadline of each send
# What one connection can hold in the server's memory: one op is in flight
# at a time, so while a response is being sent the connection receives
# nothing more; it holds at most its unconsumed input (one receive buffer,
# or a head buffer) and one response buffer (a built head or a file chunk).
# A 'GET /' response is a constant and holds no buffer at all.  What the
# kernel queues in the socket buffers is kernel memory, not the server's.
CONN_CAP = HEAD_BUF + RECV_BUF

HELLO_REQ = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def now():
    return time.monotonic()


def raise_nofile():
    """Soft RLIMIT_NOFILE up to the hard limit (20,000 here)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def report(kind, obj):
    sys.stdout.write(f"{kind} {json.dumps(obj)}\n")
    sys.stdout.flush()


def stdin_closed(timeout):
    """Waits up to timeout s for stdin; True when it is at its end."""
    r, _, _ = select.select([sys.stdin.buffer], [], [], max(timeout, 0))
    return bool(r) and os.read(sys.stdin.fileno(), 4096) == b""


def rst_close(s):
    """Closes s with a reset (SO_LINGER {1, 0})."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                     struct.pack("ii", 1, 0))
    except OSError:
        pass
    s.close()


def pct(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    i = min(len(sorted_vals) - 1, int(round(p / 100 * (len(sorted_vals) - 1))))
    return sorted_vals[i]


def connect_many(port, n, deadline_s=20.0, rcvbuf=None):
    """Starts n non-blocking connects and waits for them; returns (connected
    sockets, failures)."""
    sel = selectors.DefaultSelector()
    socks, failed = [], 0
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect: it sets the window scale
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.setblocking(False)
        err = s.connect_ex((HOST, port))
        if err not in (0, errno.EINPROGRESS):
            failed += 1
            s.close()
            continue
        sel.register(s, selectors.EVENT_WRITE)
    end = now() + deadline_s
    while sel.get_map() and now() < end:
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            sel.unregister(s)
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                failed += 1
                s.close()
            else:
                socks.append(s)
    for key in list(sel.get_map().values()):
        failed += 1
        key.fileobj.close()
    sel.close()
    return socks, failed


# ---- Load generators (each runs in a process of its own). ------------------

# Halves of request heads, cut at different places: inside the request
# line, inside a header, after a header line.
HALVES = [
    b"GET / HT",
    b"GET /index.html HTTP/1.1\r\nHo",
    b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Le",
    b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: abuse\r\n",
]


def client_halfreset(port, total, wave, hold_ms):
    """total connections in waves of wave: each connects, sends half a
    head, and after hold_ms (the server accepts and receives meanwhile)
    resets."""
    raise_nofile()
    t0 = now()
    st = {"connected": 0, "sent": 0, "failed": 0, "waves": 0}
    done = 0
    while done < total:
        n = min(wave, total - done)
        socks, failed = connect_many(port, n)
        st["failed"] += failed
        st["connected"] += len(socks)
        for i, s in enumerate(socks):
            try:
                s.send(HALVES[(done + i) % len(HALVES)])
                st["sent"] += 1
            except OSError:
                st["failed"] += 1
        time.sleep(hold_ms / 1000)  # part of the abuse: half-open for a while
        for s in socks:
            rst_close(s)
        done += n
        st["waves"] += 1
    st["seconds"] = round(now() - t0, 2)
    report("DONE", st)


def client_normal(port, interval_ms):
    """A keep-alive client: GET / every interval_ms until stdin closes;
    reports its latencies.  A response is checked whole (200, 'hello')."""
    lat, errors, reconnects = [], [], 0
    s = f = None
    next_t = now()
    ready = False
    while True:
        if s is None:
            try:
                s = socket.create_connection((HOST, port), timeout=5)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                f = s.makefile("rb")
            except OSError as e:
                errors.append(f"connect: {e!r}")
                s = None
        if s is not None:
            t = now()
            try:
                s.sendall(HELLO_REQ)
                status = f.readline()
                length = None
                while True:
                    h = f.readline()
                    if h in (b"\r\n", b""):
                        break
                    if h.lower().startswith(b"content-length:"):
                        length = int(h.split(b":")[1])
                body = f.read(length or 0)
                if not status.startswith(b"HTTP/1.1 200") or body != b"hello":
                    raise ValueError(f"bad response {status!r} {body!r}")
                lat.append(now() - t)
            except (OSError, ValueError) as e:
                errors.append(repr(e))
                f.close()
                s.close()
                s = f = None
                reconnects += 1
        if not ready:
            report("READY", {})
            ready = True
        next_t += interval_ms / 1000
        if stdin_closed(next_t - now()):
            break
    if s is not None:
        f.close()
        s.close()
    lat.sort()
    report("DONE", {
        "requests": len(lat), "errors": len(errors),
        "first_errors": errors[:3], "reconnects": reconnects,
        "p50_ms": round(pct(lat, 50) * 1000, 2),
        "p99_ms": round(pct(lat, 99) * 1000, 2),
        "max_ms": round((lat[-1] if lat else float("nan")) * 1000, 2)})


def client_slowloris(port, clients, interval_ms, give_up_s):
    """clients connections, each trickling an endless request head one byte
    every interval_ms (and going on after the server's answer, as an
    attacker would) until the server resets it or give_up_s passes.
    Reports per client: when its first byte went, when the server's end of
    stream came, whether the answer was a 408, and whether it was reset."""
    raise_nofile()
    socks, failed = connect_many(port, clients)
    t0 = now()
    head = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"z" * 100000
    cl = []
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        c = {"s": s, "next": t0 + random.random() * interval_ms / 1000,
             "pos": 0, "first": None, "eof": None, "reset": None, "got": b""}
        cl.append(c)
        sel.register(s, selectors.EVENT_READ, c)
    report("READY", {"connected": len(socks), "failed": failed})
    end = t0 + give_up_s
    while now() < end and any(c["reset"] is None for c in cl):
        wake = min((c["next"] for c in cl if c["reset"] is None), default=end)
        for key, _ in sel.select(timeout=max(0, min(wake, end) - now())):
            c = key.data
            try:
                data = c["s"].recv(4096)
            except OSError:
                data = None
            if data:
                c["got"] = (c["got"] + data)[:64]
                continue
            if data == b"" and c["eof"] is None:
                c["eof"] = now()
            elif data is None:
                c["reset"] = now()
            sel.unregister(c["s"])  # at its end: readable for good
        t = now()
        for c in cl:
            if c["reset"] is not None or c["next"] > t:
                continue
            try:
                c["s"].send(head[c["pos"]:c["pos"] + 1])
                if c["first"] is None:
                    c["first"] = t
                c["pos"] += 1
                c["next"] += interval_ms / 1000
            except OSError:
                c["reset"] = t
    out = []
    for c in cl:
        rel = (lambda v: None if v is None else round(v - t0, 3))
        out.append({"first": rel(c["first"]), "eof": rel(c["eof"]),
                    "reset": rel(c["reset"]), "bytes": c["pos"],
                    "r408": c["got"].startswith(b"HTTP/1.1 408")})
        c["s"].close()
    report("DONE", {"failed": failed, "clients": out})


def client_noread(port, clients, path, per_client):
    """clients connections that pipeline requests and never read: half of
    them per_client GETs of path (a large file), half 'GET /' until the
    buffers are full.  Each advertises a small receive window (SO_RCVBUF
    4 KiB, a slow reader's), so the server's sends stall soon.  At a line
    on stdin the first half close (with unread data waiting: a reset); the
    others hold until stdin closes."""
    raise_nofile()
    socks, failed = connect_many(port, clients, rcvbuf=4096)
    big = (b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n") * \
        per_client
    hellos = HELLO_REQ * (4 * MIB // len(HELLO_REQ))
    sel = selectors.DefaultSelector()
    left = {}
    for i, s in enumerate(socks):
        left[s] = [big if i % 2 == 0 else hellos, 0]
        sel.register(s, selectors.EVENT_WRITE)
    sent = 0
    end = now() + 20
    # Until every request is sent or none of them has been writable for
    # 0.3 s: the server no longer reads, stuck sending to non-readers.
    while sel.get_map() and now() < end:
        ready = sel.select(timeout=0.3)
        if not ready:
            break
        for key, _ in ready:
            s = key.fileobj
            blob, off = left[s]
            try:
                n = s.send(blob[off:off + 65536])
            except BlockingIOError:
                continue
            except OSError:
                n, off = 0, len(blob)
            sent += n
            left[s][1] = off + n
            if off + n >= len(blob):
                sel.unregister(s)
    report("READY", {"connected": len(socks), "failed": failed,
                     "request_bytes": sent})
    # A line on stdin: the first half close (both kinds); the others hold
    # until stdin closes.
    half = len(socks) // 2
    if sys.stdin.buffer.readline():
        for s in socks[:half]:
            s.close()
        report("CLOSED", {"closed": half})
        while not stdin_closed(3600):
            pass
    for s in socks[half:]:
        s.close()
    report("DONE", {})


def client_flood(port, conns):
    """conns connections at once, each sending 'GET /'; counts the answers
    while it holds them; closes them all when stdin closes."""
    raise_nofile()
    socks, failed = connect_many(port, conns)
    for s in socks:
        try:
            s.send(HELLO_REQ)
        except OSError:
            pass
    report("READY", {"connected": len(socks), "failed": failed})
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin.buffer, selectors.EVENT_READ, None)
    for s in socks:
        sel.register(s, selectors.EVENT_READ, s)
    answered = closed = 0
    stop = False
    while not stop:
        for key, _ in sel.select(timeout=1):
            if key.data is None:
                stop = os.read(sys.stdin.fileno(), 4096) == b""
                continue
            try:
                data = key.data.recv(4096)
            except OSError:
                data = b""
            if data.startswith(b"HTTP/1.1 200"):
                answered += 1
            if not data:
                closed += 1
                sel.unregister(key.data)
    for s in socks:
        s.close()
    report("DONE", {"answered": answered, "closed_by_server": closed})


def client_split(port, conns):
    """conns connections (in batches of 1,000), each sending the first half
    of a head; READY; then, when a line comes on stdin, the even ones send
    the rest and read their answers, and after them the odd ones reset."""
    raise_nofile()
    socks, failed = [], 0
    while len(socks) + failed < conns:
        got, bad = connect_many(port, min(1000, conns - len(socks) - failed))
        for s in got:
            try:
                s.send(b"GET / HTTP/1.1\r\nHo")
            except OSError:
                failed += 1
        socks += got
        failed += bad
    report("READY", {"connected": len(socks), "failed": failed})
    sys.stdin.buffer.readline()
    t0 = now()
    sel = selectors.DefaultSelector()
    for s in socks[0::2]:
        try:
            s.send(b"st: x\r\n\r\n")
            sel.register(s, selectors.EVENT_READ)
        except OSError:
            s.close()
    answered, last = 0, None
    end = now() + 30
    while sel.get_map() and now() < end:
        for key, _ in sel.select(timeout=0.5):
            try:
                data = key.fileobj.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data.startswith(b"HTTP/1.1 200"):
                answered += 1
                last = now() - t0
            sel.unregister(key.fileobj)
            key.fileobj.close()
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    for s in socks[1::2]:
        rst_close(s)
    report("DONE", {"completed": len(socks[0::2]), "answered": answered,
                    "seconds": None if last is None else round(last, 3)})


# ---- The orchestrator's side. -----------------------------------------------

class Server:
    """examples/http_server on a free port, its output drained."""

    def __init__(self, exe, args, nofile=None):
        def limit():
            if nofile is not None:
                hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))
        self.p = subprocess.Popen(
            [exe, "--host", HOST, "--port", "0"] + args,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, preexec_fn=limit)
        self.pid = self.p.pid
        self.lines, self.port = [], None
        end = now() + 20
        while now() < end:
            line = self.p.stdout.readline()
            if not line:
                break
            line = line.decode(errors="replace").rstrip()
            self.lines.append(line)
            m = re.match(r"^listening on .*:(\d+)$", line)
            if m:
                self.port = int(m.group(1))
                break
        if self.port is None:
            self.p.kill()
            self.p.wait()
            raise RuntimeError("server did not start: " + " | ".join(self.lines))
        self.t = threading.Thread(target=self._drain, daemon=True)
        self.t.start()

    def _drain(self):
        for line in self.p.stdout:
            self.lines.append(line.decode(errors="replace").rstrip())

    def fds(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def fd_list(self):
        """What the open descriptors are (socket:[inode], paths, ...)."""
        out = []
        for n in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                out.append(re.sub(r"\[\d+\]", "", os.readlink(
                    f"/proc/{self.pid}/fd/{n}")))
            except OSError:
                pass
        return sorted(out)

    def rss_kib(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return -1

    def cpu_s(self):
        """User + system CPU time so far, in seconds."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        """SIGTERM; the exit status, or None if it did not exit in 20 s."""
        if self.p.poll() is not None:
            return self.p.returncode
        self.p.send_signal(signal.SIGTERM)
        try:
            rc = self.p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            rc = None
        self.t.join(timeout=5)
        return rc


class Client:
    """A load generator in a process of its own (this file)."""

    def __init__(self, kind, *args):
        self.p = subprocess.Popen(
            [sys.executable, HERE, "client-" + kind] + [str(a) for a in args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.buf = b""

    def wait(self, tag, timeout):
        """The json of the client's next 'tag' line, or None by the
        deadline."""
        end = now() + timeout
        fd = self.p.stdout.fileno()
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                if line.startswith(tag.encode() + b" "):
                    return json.loads(line[len(tag) + 1:])
            left = end - now()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self.buf += chunk

    def finish(self, timeout=30):
        """Closes its stdin (the end of its hold); its DONE json or None."""
        try:
            self.p.stdin.close()
        except OSError:
            pass
        done = self.wait("DONE", timeout)
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        return done

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def stuck_sends(port, least=64 * 1024):
    """(sockets, bytes): the server's established sockets on port whose
    send queue holds at least least bytes, and how much (/proc/net/tcp
    tx_queue; a response on its way to a client that reads, such as the
    keep-alive client's, holds less)."""
    n = total = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, state, queues = fields[1], fields[3], fields[4]
            tx = int(queues.split(":")[0], 16)
            if int(local.split(":")[1], 16) == port and state == "01" and \
                    tx >= least:
                n += 1
                total += tx
    return n, total


def drained_sockets(port):
    """The server's established sockets on port with nothing left unread
    (/proc/net/tcp rx_queue 0)."""
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            rx = int(fields[4].split(":")[1], 16)
            if int(fields[1].split(":")[1], 16) == port and \
                    fields[3] == "01" and rx == 0:
                n += 1
    return n


def extra_fds(srv, base_list):
    """The descriptors open now that were not at the baseline."""
    extra = list(srv.fd_list())
    for x in base_list:
        if x in extra:
            extra.remove(x)
    return extra


def wait_until(pred, timeout, step=0.05):
    """Polls pred until it holds or timeout s pass; (held, seconds)."""
    t0 = now()
    while True:
        if pred():
            return True, now() - t0
        if now() - t0 >= timeout:
            return False, now() - t0
        time.sleep(step)


def http_get(port, path="/", timeout=5.0):
    """One request on a new connection: (status, body), (None, error)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(b"GET " + path.encode() +
                      b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
    except OSError as e:
        return None, repr(e)
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.1 (\d+) ", head)
    return (int(m.group(1)) if m else None), body


class Sampler:
    """Samples a server's descriptors and RSS every 50 ms in a thread."""

    def __init__(self, srv):
        self.srv, self.max_fds, self.max_rss = srv, 0, 0
        self.stop_ev = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stop_ev.is_set():
            try:
                self.max_fds = max(self.max_fds, self.srv.fds())
                self.max_rss = max(self.max_rss, self.srv.rss_kib())
            except OSError:
                return
            self.stop_ev.wait(0.05)

    def stop(self):
        self.stop_ev.set()
        self.t.join(timeout=5)


class Checks:
    def __init__(self):
        self.failed = []

    def __call__(self, cond, what):
        if not cond and what not in self.failed:
            self.failed.append(what)
        return cond


def mib(kib):
    return f"{kib / 1024:.1f} MiB"


def answers(port, checks, when):
    st, body = http_get(port)
    checks(st == 200 and body == b"hello",
           f"answers GET / {when} (got {st} {body[:60]!r})")
    return st == 200 and body == b"hello"


def stop_server(srv, checks):
    rc = srv.stop()
    checks(rc == 0, f"the server exits cleanly on SIGTERM (status {rc})")


# ---- Scenarios. -------------------------------------------------------------

def scenario_half_reset(exe):
    total, wave, hold_ms, warm_max = 10000, 1000, 100, 10
    ck = Checks()
    srv = Server(exe, ["--threads", "2"])
    try:
        base_fds, base_list = srv.fds(), srv.fd_list()
        answers(srv.port, ck, "at the start")
        # Warm-up: the same abuse a wave at a time until a wave adds less
        # than 1% to RSS (at most warm_max waves), so that pools, the handle
        # table and the allocator have their working set before RSS is
        # taken.  (io_uring's buffer ring grows on demand and the kernel
        # takes its buffers in turn: how many get touched depends on the
        # timing of the first waves.)
        rss_warm, warm_waves = srv.rss_kib(), 0
        while warm_waves < warm_max:
            warm = Client("halfreset", srv.port, wave, wave, hold_ms)
            ck(warm.wait("DONE", 120) is not None, "the warm-up finishes")
            warm.finish()
            warm_waves += 1
            ok, _ = wait_until(lambda: srv.fds() == base_fds, 10)
            ck(ok, "descriptors back to the baseline after the warm-up")
            rss, rss_warm = rss_warm, srv.rss_kib()
            if warm_waves >= 2 and rss_warm - rss < rss / 100:
                break
        samp = Sampler(srv)
        cl = Client("halfreset", srv.port, total, wave, hold_ms)
        done = cl.wait("DONE", 300)
        cl.finish()
        samp.stop()
        ck(done is not None, "the client finishes in 300 s")
        done = done or {}
        ck(done.get("sent") == total,
           f"every connection sent its half head ({done.get('sent')}/{total})")
        settled, settle_s = wait_until(lambda: srv.fds() == base_fds, 10)
        fds_after = srv.fds()
        ck(settled, f"descriptors back to the baseline {base_fds} within "
           f"10 s (extra: {extra_fds(srv, base_list)})")
        rss_after = srv.rss_kib()
        growth = (rss_after - rss_warm) / rss_warm * 100
        ck(growth <= 10, f"RSS within +10% of the warm value "
           f"({growth:+.1f}%)")
        ok = answers(srv.port, ck, "afterwards")
    finally:
        stop_server(srv, ck)
    fig = (f"{done.get('sent', 0)}/{total} half heads then resets in "
           f"{done.get('waves', 0)} waves of {wave} ({done.get('seconds')} s, "
           f"{done.get('failed', 0)} connect failures); peak fds "
           f"{samp.max_fds}, fds {base_fds} -> {fds_after} "
           f"(settled in {settle_s:.2f} s); RSS after a warm-up of "
           f"{warm_waves} waves {mib(rss_warm)}, after {mib(rss_after)} "
           f"({growth:+.1f}%, "
           f"limit +10%), peak {mib(samp.max_rss)}; "
           f"{'answers' if ok else 'does NOT answer'} afterwards")
    return fig, ck.failed


def scenario_slowloris(exe):
    clients, head_ms, slack_ms = 500, 2000, 1000
    ck = Checks()
    srv = Server(exe, ["--threads", "2", "--head-ms", str(head_ms)])
    normal = loris = None
    try:
        normal = Client("normal", srv.port, 10)
        ck(normal.wait("READY", 10) is not None, "the keep-alive client runs")
        time.sleep(0.5)  # some latencies before the attack, as a reference
        base_fds = srv.fds()  # the keep-alive connection included
        base_list = srv.fd_list()
        rss_before = srv.rss_kib()
        samp = Sampler(srv)
        loris = Client("slowloris", srv.port, clients, 1000,
                       head_ms / 1000 + LINGER_MS / 1000 + 6)
        ready = loris.wait("READY", 30) or {}
        ck(ready.get("connected") == clients,
           f"{clients} slowloris clients connected ({ready.get('connected')})")
        # The server holds them all, then lets go of every descriptor: a
        # first byte comes within 1 s, the 408 head_ms later, and the
        # lingering close takes LINGER_MS more at most.
        held, _ = wait_until(lambda: srv.fds() >= base_fds + clients, 10)
        ck(held, f"the server accepts all {clients}")
        limit_s = (head_ms + LINGER_MS) / 1000 + 1 + slack_ms / 1000
        released, release_s = wait_until(lambda: srv.fds() == base_fds,
                                         limit_s + 5)
        ck(released and release_s <= limit_s,
           f"the server releases every descriptor within {limit_s:.0f} s "
           f"({release_s:.2f} s; extra: {extra_fds(srv, base_list)})")
        done = loris.wait("DONE", 60)
        loris.finish()
        ck(done is not None, "the slowloris client finishes")
        cl = (done or {}).get("clients", [])
        # Each is closed by the server head_ms after its first byte.
        closed = [c for c in cl if c["first"] is not None and
                  (c["eof"] is not None or c["reset"] is not None)]
        took = sorted((c["eof"] if c["eof"] is not None else c["reset"]) -
                      c["first"] for c in closed)
        r408 = sum(1 for c in cl if c["r408"])
        late = [t for t in took if t * 1000 > head_ms + slack_ms]
        early = [t for t in took if t * 1000 < head_ms - 50]
        ck(len(closed) == clients, f"all {clients} closed by the server "
           f"({len(closed)})")
        ck(r408 == clients, f"all {clients} answered 408 ({r408})")
        ck(not late, f"closed by --head-ms + {slack_ms} ms ({len(late)} late)")
        ck(not early, f"none closed before --head-ms ({len(early)} early)")
        samp.stop()
        time.sleep(0.3)
        nd = normal.finish() or {}
        normal = None
        ck(nd.get("errors", 1) == 0,
           f"the keep-alive client saw no error ({nd.get('first_errors')})")
        ck(nd.get("p99_ms", 1e9) < 50,
           f"keep-alive p99 under 50 ms ({nd.get('p99_ms')} ms)")
        ck(nd.get("requests", 0) >= 300, "the keep-alive client made at "
           f"least 300 requests ({nd.get('requests')})")
        answers(srv.port, ck, "afterwards")
    finally:
        for c in (normal, loris):
            if c is not None:
                c.kill()
        stop_server(srv, ck)
    resets = sum(1 for c in cl if c["reset"] is not None)
    fig = (f"{len(closed)}/{clients} trickling clients closed by the server "
           f"{r408} with 408, {(took[0] if took else 0):.2f}-"
           f"{(took[-1] if took else 0):.2f} s after their first byte "
           f"(--head-ms {head_ms}, limit +{slack_ms} ms), {resets} later "
           f"reset by the lingering close; peak fds {samp.max_fds}, RSS "
           f"{mib(rss_before)} -> peak {mib(samp.max_rss)}, all released "
           f"{release_s:.2f} s after they connected (limit {limit_s:.0f} s); "
           f"keep-alive client: "
           f"{nd.get('requests')} requests, p50 {nd.get('p50_ms')} ms, p99 "
           f"{nd.get('p99_ms')} ms (limit 50), max {nd.get('max_ms')} ms, "
           f"{nd.get('errors')} errors")
    return fig, ck.failed


def scenario_no_read(exe):
    clients, per_client, hold_s = 50, 32, 5.0
    # The allocator, libc's AIO threads (posix_aio) and the sampling's own
    # jitter: a constant, not per connection.
    slack_kib = 4 * 1024
    bound_kib = clients * CONN_CAP // 1024 + slack_kib
    ck = Checks()
    root = tempfile.mkdtemp(prefix="px-soak-root-")
    big = random.Random(3).randbytes(4 * MIB)
    with open(os.path.join(root, "big.bin"), "wb") as f:
        f.write(big)
    srv = Server(exe, ["--threads", "2", "--root", root])
    normal = noread = None
    try:
        # Warm-up: serve the file over 16 connections (the kernel spreads
        # them over both threads' listeners; a loop may set up its file
        # I/O at its first file) and let the keep-alive client start, so
        # that descriptors and RSS are taken with file serving in use.
        for _ in range(16):
            st, body = http_get(srv.port, "/big.bin", 20)
            ck(st == 200 and body == big, "serves the file before")
        normal = Client("normal", srv.port, 10)
        ck(normal.wait("READY", 10) is not None, "the keep-alive client runs")
        time.sleep(0.5)
        base_fds, base_list = srv.fds(), srv.fd_list()
        rss_warm = srv.rss_kib()
        samp = Sampler(srv)
        noread = Client("noread", srv.port, clients, "/big.bin", per_client)
        ready = noread.wait("READY", 60) or {}
        t_ready = now()
        ck(ready.get("connected") == clients,
           f"{clients} never-reading clients connected "
           f"({ready.get('connected')})")
        # They hold: each has a response stuck in the server's send.
        held, _ = wait_until(lambda: stuck_sends(srv.port)[0] >= clients, 10)
        stuck, stuck_bytes = stuck_sends(srv.port)
        ck(held, f"the server's sends to all {clients} are stuck ({stuck})")
        t_end = now() + hold_s
        served = tries = 0
        while now() < t_end:
            st, body = http_get(srv.port, "/big.bin", 20)
            tries += 1
            served += st == 200 and body == big
            time.sleep(0.2)
        ck(served == tries, f"serves the file to another client meanwhile "
           f"({served}/{tries})")
        fds_held = srv.fds()
        # Half of them close: the server lets go of those at once.
        noread.p.stdin.write(b"close\n")
        noread.p.stdin.flush()
        half = (noread.wait("CLOSED", 10) or {}).get("closed", 0)
        rest = clients - half
        dropped, drop_s = wait_until(
            lambda: stuck_sends(srv.port)[0] <= rest, 10)
        ck(dropped, f"the server drops the {half} that closed "
           f"({stuck_sends(srv.port)[0]} still stuck)")
        # The others never close: the server's send deadline drops them.
        limit_s = SEND_TIMEOUT_MS / 1000 + 5
        settled, _ = wait_until(lambda: srv.fds() == base_fds,
                                max(0, t_ready + limit_s + 5 - now()), 0.2)
        release_s = now() - t_ready
        fds_after = srv.fds()
        samp.stop()
        ck(settled and release_s <= limit_s,
           f"the server drops the {rest} that never close by its send "
           f"deadline + 5 s ({release_s:.1f} s after they stalled; extra: "
           f"{extra_fds(srv, base_list)})")
        growth = samp.max_rss - rss_warm
        ck(growth <= bound_kib, f"RSS growth {growth} KiB within "
           f"{bound_kib} KiB")
        noread.finish()
        noread = None
        nd = normal.finish() or {}
        normal = None
        ck(nd.get("errors", 1) == 0 and nd.get("requests", 0) > 100,
           f"the keep-alive client is served meanwhile ({nd})")
        answers(srv.port, ck, "afterwards")
    finally:
        for c in (normal, noread):
            if c is not None:
                c.kill()
        stop_server(srv, ck)
        for name in os.listdir(root):
            os.unlink(os.path.join(root, name))
        os.rmdir(root)
    fig = (f"{ready.get('connected')} clients pipelined "
           f"{ready.get('request_bytes', 0) // 1024} KiB of requests "
           f"(GET of a 4 MiB file x{per_client}, or GET / until the buffers "
           f"filled) and never read, the server's sends to {stuck} stuck "
           f"({stuck_bytes // 1024} KiB in kernel queues): RSS "
           f"{mib(rss_warm)} -> peak {mib(samp.max_rss)} (+{growth} KiB; "
           f"bound {clients} x {CONN_CAP // 1024} KiB + {slack_kib // 1024} "
           f"MiB = {bound_kib} KiB); meanwhile the file served {served} "
           f"times and GET / {nd.get('requests')} times (p99 "
           f"{nd.get('p99_ms')} ms, {nd.get('errors')} errors); fds "
           f"{base_fds} -> {fds_held}; {half} closed after {hold_s:.0f} s "
           f"and were dropped in {drop_s:.2f} s; the other {rest} were "
           f"dropped by the send deadline {release_s:.1f} s after they "
           f"stalled (limit {limit_s:.0f} s), fds back to {fds_after}")
    return fig, ck.failed


def scenario_buffers(exe):
    conns = 6000
    ck = Checks()
    # One thread: more connections than its receive buffers (RECV_BUFFERS).
    srv = Server(exe, ["--threads", "1"])
    split = None
    try:
        base_fds, base_list = srv.fds(), srv.fd_list()
        split = Client("split", srv.port, conns)
        ready = split.wait("READY", 120) or {}
        ck(ready.get("connected") == conns,
           f"{conns} connections ({ready.get('connected')})")
        held, _ = wait_until(lambda: srv.fds() >= base_fds + conns, 20)
        ck(held, f"the server holds all {conns} ({srv.fds() - base_fds})")
        # Every receive buffer holds a first half before the rest comes.
        wait_until(lambda: drained_sockets(srv.port) >= RECV_BUFFERS, 10)
        drained = drained_sockets(srv.port)
        rss_held = srv.rss_kib()
        split.p.stdin.write(b"go\n")
        split.p.stdin.flush()
        done = split.wait("DONE", 60) or {}
        split.finish()
        split = None
        ck(done.get("answered") == done.get("completed") == conns // 2,
           f"every completed head answered ({done.get('answered')}/"
           f"{done.get('completed')})")
        # Well before --head-ms (10 s) frees the buffers of the others.
        ck((done.get("seconds") or 99) < 5,
           f"answered within 5 s ({done.get('seconds')} s)")
        settled, settle_s = wait_until(lambda: srv.fds() == base_fds, 10)
        ck(settled, f"descriptors back to the baseline {base_fds} (extra: "
           f"{len(extra_fds(srv, base_list))})")
        answers(srv.port, ck, "afterwards")
    finally:
        if split is not None:
            split.kill()
        rc = srv.stop()
        ck(rc == 0, f"the server exits cleanly on SIGTERM (status {rc})")
    stats = [x for x in srv.lines if x.startswith("stats:")]
    m = re.search(r"enobufs=(\d+)", stats[-1]) if stats else None
    enobufs = int(m.group(1)) if m else 0
    ck(enobufs > 0, "connections waited for a receive buffer")
    fig = (f"{ready.get('connected')} connections on one thread "
           f"({RECV_BUFFERS} receive buffers) with half a head each, "
           f"{drained} of them read; then half sent the rest: "
           f"{done.get('answered')}/{done.get('completed')} answered in "
           f"{done.get('seconds')} s (limit 5 s), then the other half reset; "
           f"{enobufs} waits for "
           f"a buffer; RSS {mib(rss_held)} while held; fds back to "
           f"{base_fds} in {settle_s:.2f} s")
    return fig, ck.failed


def scenario_flood(exe):
    nofile, conns, window_s, max_core = 256, 1000, 3.0, 0.20
    ck = Checks()
    # A long idle time: the flood holds until its clients let go.
    srv = Server(exe, ["--threads", "2", "--idle-ms", "60000"], nofile=nofile)
    flood = None
    waiting = None
    try:
        base_fds, base_list = srv.fds(), srv.fd_list()
        answers(srv.port, ck, "before")
        flood = Client("flood", srv.port, conns)
        ready = flood.wait("READY", 60) or {}
        ck(ready.get("connected") == conns,
           f"{conns} connections established ({ready.get('connected')})")
        # The server takes descriptors until the limit.
        full, _ = wait_until(lambda: srv.fds() >= nofile - 16, 10)
        fds_full = srv.fds()
        ck(full, f"the server reaches its descriptor limit ({fds_full} open, "
           f"limit {nofile})")
        # A client that comes during the flood waits in the backlog.
        waiting = socket.create_connection((HOST, srv.port), timeout=10)
        waiting.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close"
                        b"\r\n\r\n")
        c0, t0 = srv.cpu_s(), now()
        time.sleep(window_s)  # the measuring window
        cpu = (srv.cpu_s() - c0) / (now() - t0)
        ck(cpu < max_core, f"no busy accept loop: {cpu * 100:.1f}% of a "
           f"core over {window_s:.0f} s (limit {max_core * 100:.0f}%)")
        t_close = now()
        fd = flood.finish(60) or {}
        flood = None
        data = b""
        try:
            while True:
                chunk = waiting.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError as e:
            data += repr(e).encode()
        t_wait = now() - t_close
        waiting.close()  # the server lingers until this end closes
        waiting = None
        ck(data.startswith(b"HTTP/1.1 200") and data.endswith(b"hello") and
           t_wait < 10, f"the client that waited in the backlog is answered "
           f"within 10 s of the flood's end ({t_wait:.2f} s: {data[:40]!r})")
        t1 = now()
        fresh = answers(srv.port, ck, "a new client after the flood")
        t_fresh = now() - t1
        settled, settle_s = wait_until(lambda: srv.fds() == base_fds, 10)
        ck(settled, f"descriptors back to the baseline {base_fds} (extra: "
           f"{extra_fds(srv, base_list)})")
    finally:
        if waiting is not None:
            waiting.close()
        if flood is not None:
            flood.kill()
        stop_server(srv, ck)
    fig = (f"RLIMIT_NOFILE {nofile}, {ready.get('connected')} connections at "
           f"once: {fd.get('answered')} answered while the flood held, "
           f"server at {fds_full} fds; CPU {cpu * 100:.1f}% of a core over "
           f"{window_s:.0f} s (limit {max_core * 100:.0f}%); after the flood "
           f"closed, the waiting client answered in {t_wait:.2f} s, a new one "
           f"{'in %.3f s' % t_fresh if fresh else 'NOT'}; fds back to "
           f"{base_fds} in {settle_s:.2f} s")
    return fig, ck.failed


SCENARIOS = {
    "half-reset": scenario_half_reset,
    "slowloris": scenario_slowloris,
    "no-read": scenario_no_read,
    "buffers": scenario_buffers,
    "flood": scenario_flood,
}


def run(argv):
    import argparse
    ap = argparse.ArgumentParser(prog="http_abuse.py run")
    ap.add_argument("server")
    ap.add_argument("--backend", required=True)
    ap.add_argument("--only", nargs="*", choices=list(SCENARIOS))
    a = ap.parse_args(argv)
    raise_nofile()
    passed = failed = 0
    for name in a.only or list(SCENARIOS):
        t0 = now()
        try:
            fig, fails = SCENARIOS[name](a.server)
        except Exception as e:  # a crash of the harness is a failure too
            traceback.print_exc()
            fig, fails = f"error: {e!r}", [repr(e)]
        took = now() - t0
        verdict = "FAIL" if fails else "PASS"
        line = f"{verdict} {a.backend} {name} ({took:.0f} s): {fig}"
        if fails:
            line += "; failed: " + "; ".join(fails)
        print(line, flush=True)
        passed += not fails
        failed += bool(fails)
    print(f"RESULT passed={passed} failed={failed}", flush=True)
    return 1 if failed else 0


CLIENTS = {
    "client-halfreset": lambda a: client_halfreset(int(a[0]), int(a[1]),
                                                   int(a[2]), int(a[3])),
    "client-normal": lambda a: client_normal(int(a[0]), int(a[1])),
    "client-slowloris": lambda a: client_slowloris(int(a[0]), int(a[1]),
                                                   int(a[2]), float(a[3])),
    "client-noread": lambda a: client_noread(int(a[0]), int(a[1]), a[2],
                                             int(a[3])),
    "client-flood": lambda a: client_flood(int(a[0]), int(a[1])),
    "client-split": lambda a: client_split(int(a[0]), int(a[1])),
}

if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "run":
        sys.exit(run(sys.argv[2:]))
    if len(sys.argv) >= 2 and sys.argv[1] in CLIENTS:
        CLIENTS[sys.argv[1]](sys.argv[2:])
        sys.exit(0)
    raise SystemExit(__doc__)
