#!/usr/bin/env python3
"""Drives examples/http_server with real clients: curl, raw sockets, wrk.

Usage: http_server_test.py GROUP SERVER [--wrapper CMD]

GROUP is one of: routes, pipelining, limits, deadlines, threads, conncap,
wrk, bufwait.  Each group starts the server with the options it needs on a free
loopback port, runs its cases and stops the server with SIGTERM (checking
that it exits cleanly).  Every wait has a deadline.  The exit status is 0
when every case passed; each failure is printed.
"""
import os
import random
import re
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

FAILS = []


def check(cond, what):
    if cond:
        print(f"  ok   {what}")
    else:
        print(f"  FAIL {what}")
        FAILS.append(what)


class Server:
    def __init__(self, exe, wrapper, args):
        cmd = wrapper + [exe, "--host", "127.0.0.1", "--port", "0"] + args
        env = dict(os.environ, WINEDEBUG=os.environ.get("WINEDEBUG", "-all"))
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=env)
        self.lines = []
        self.port = None
        deadline = time.monotonic() + 60  # wine's first start is slow
        while time.monotonic() < deadline:
            line = self.p.stdout.readline()
            if not line:
                break
            line = line.decode(errors="replace").rstrip("\r\n")
            self.lines.append(line)
            m = re.match(r"^listening on .*:(\d+)$", line)
            if m:
                self.port = int(m.group(1))
                break
        if self.port is None:
            self.p.kill()
            raise SystemExit("server did not start:\n" + "\n".join(self.lines))
        # Drain the rest of its output in the background.
        self.t = threading.Thread(target=self._drain, daemon=True)
        self.t.start()

    def _drain(self):
        for line in self.p.stdout:
            self.lines.append(line.decode(errors="replace").rstrip("\r\n"))

    def stop(self):
        if WRAPPED:
            # Under wine a POSIX signal is no console control event: the
            # server is ended, not stopped; only native runs check the exit.
            self.p.kill()
            self.p.wait()
            self.t.join(timeout=5)
            return 0
        self.p.send_signal(signal.SIGTERM)
        try:
            rc = self.p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            rc = None
        self.t.join(timeout=5)
        return rc


def connect(port, timeout=5.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_response(f):
    """One response from a file-like socket reader: (status, headers, body),
    or None at the end of the stream."""
    line = f.readline()
    if not line:
        return None
    m = re.match(rb"HTTP/1\.1 (\d{3}) ", line)
    if not m:
        raise ValueError(f"bad status line {line!r}")
    status = int(m.group(1))
    headers = {}
    while True:
        h = f.readline()
        if h in (b"\r\n", b""):
            break
        k, _, v = h.decode().partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, f


def get_body(resp, head=False):
    status, headers, f = resp
    n = int(headers.get("content-length", "0"))
    return b"" if head else f.read(n)


def exchange(port, raw, timeout=5.0):
    """Sends raw bytes, returns (status, body, closed_after)."""
    s = connect(port, timeout)
    try:
        s.sendall(raw)
        f = s.makefile("rb")
        resp = read_response(f)
        if resp is None:
            return None, b"", True
        body = get_body(resp)
        try:
            rest = f.read(1)
            closed = rest == b""
        except (ConnectionResetError, socket.timeout):
            closed = False
        return resp[0], body, closed
    finally:
        s.close()


def curl(*args):
    r = subprocess.run(["curl", "-sS", "--max-time", "20"] + list(args),
                       capture_output=True, timeout=30)
    return r


# ---- Groups. ----------------------------------------------------------------

def group_routes(exe, wrapper):
    root = tempfile.mkdtemp(prefix="px-http-root-")
    try:
        small = os.path.join(root, "small.txt")
        with open(small, "wb") as f:
            f.write(b"a small file\n")
        big_data = random.Random(7).randbytes(5 * 1024 * 1024 + 123)
        os.mkdir(os.path.join(root, "dir"))
        with open(os.path.join(root, "dir", "big.bin"), "wb") as f:
            f.write(big_data)
        srv = Server(exe, wrapper, ["--threads", "1", "--root", root])
        base = f"http://127.0.0.1:{srv.port}"
        check(any(l.startswith("px backend: ") for l in srv.lines),
              "prints the 'px backend: NAME' line")
        r = curl(base + "/")
        check(r.returncode == 0 and r.stdout == b"hello", "GET / is hello")
        r = curl("-I", base + "/")
        check(b"200 OK" in r.stdout and b"Content-Length: 5" in r.stdout,
              "HEAD / gives the head of hello")
        r = curl(base + "/small.txt")
        check(r.stdout == b"a small file\n", "GET of a small static file")
        out = os.path.join(root, "got.bin")
        r = curl("-o", out, base + "/dir/big.bin")
        with open(out, "rb") as f:
            check(f.read() == big_data,
                  "a 5 MiB file (larger than any buffer) comes byte-exact")
        r = curl("-o", "/dev/null", "-w", "%{http_code}", base + "/nothing")
        check(r.stdout == b"404", "a missing file is 404")
        r = curl("-o", "/dev/null", "-w", "%{http_code}", base + "/dir")
        check(r.stdout == b"403", "a directory is 403")
        st, _, _ = exchange(srv.port, b"GET /../etc/passwd HTTP/1.1\r\n"
                            b"Host: x\r\n\r\n")
        check(st == 403, "a '..' path is refused (403)")
        st, _, _ = exchange(srv.port, b"GET /%2e%2e/%2e%2e/etc/passwd "
                            b"HTTP/1.1\r\nHost: x\r\n\r\n")
        check(st == 403, "a percent-encoded '..' path is refused (403)")
        r = curl("--data-binary", "x" * 1000, base + "/count")
        check(r.stdout == b"1000\n", "POST /count with Content-Length")
        r = curl("-H", "Transfer-Encoding: chunked", "--data-binary",
                 "y" * 70000, base + "/count")
        check(r.stdout == b"70000\n", "POST /count with a chunked body")
        if hasattr(os, "mkfifo") and not WRAPPED:
            os.mkfifo(os.path.join(root, "fifo"))
            st, _, _ = exchange(srv.port, b"GET /fifo HTTP/1.1\r\nHost: x"
                                b"\r\n\r\n")
            check(st == 403, "a FIFO under the root is refused, without "
                  "blocking the server")
        st, _, closed = exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\n"
                                 b"Content-Length: 3\r\n\r\nabc")
        check(st == 400 and closed, "a GET with a body is refused (400)")
        # Expect: 100-continue gets its interim answer before the body.
        s = connect(srv.port)
        s.sendall(b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 4"
                  b"\r\nExpect: 100-continue\r\n\r\n")
        f = s.makefile("rb")
        interim = f.readline()
        f.readline()
        s.sendall(b"wxyz")
        resp = read_response(f)
        check(interim.startswith(b"HTTP/1.1 100") and resp and
              get_body(resp) == b"4\n", "Expect: 100-continue is answered")
        f.close()
        s.close()
        s = connect(srv.port)
        s.sendall(b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n")
        f = s.makefile("rb")
        resp = read_response(f)
        check(resp and resp[0] == 405 and
              resp[1].get("allow") == "GET, HEAD", "405 names what is allowed")
        f.close()
        s.close()
        r = curl("-v", base + "/", base + "/small.txt")
        check(r.stdout == b"hello" + b"a small file\n" and
              b"Re-using existing connection" in r.stderr,
              "keep-alive: curl reuses the connection")
        s = connect(srv.port)
        s.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        f = s.makefile("rb")
        resp = read_response(f)
        ok = resp and resp[0] == 200 and \
            resp[1].get("connection", "").lower() == "keep-alive"
        get_body(resp)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        resp2 = read_response(f)
        ok = ok and resp2 and get_body(resp2) == b"hello" and \
            f.read(1) == b""
        check(ok, "HTTP/1.0: keep-alive when asked, closed when not")
        s.close()
        rc = srv.stop()
        check(rc == 0, "the server exits cleanly on SIGTERM")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def group_pipelining(exe, wrapper):
    srv = Server(exe, wrapper, ["--threads", "1"])
    reqs = [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 200, b"hello"),
        (b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
         200, b"3\n"),
        (b"POST /count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
         b"\r\n\r\n4\r\nwxyz\r\n1\r\n!\r\n0\r\n\r\n", 200, b"5\n"),
        (b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", 200, b""),
        (b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n", 404, b""),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 200, b"hello"),
    ]
    for mode in ("one write", "byte by byte", "two writes split mid-head"):
        s = connect(srv.port, 10)
        blob = b"".join(r[0] for r in reqs)
        if mode == "one write":
            s.sendall(blob)
        elif mode == "byte by byte":
            for i in range(len(blob)):
                s.send(blob[i:i + 1])
        else:
            cut = len(reqs[0][0]) + 7
            s.sendall(blob[:cut])
            time.sleep(0.05)
            s.sendall(blob[cut:])
        f = s.makefile("rb")
        ok = True
        for raw, status, body in reqs:
            resp = read_response(f)
            if resp is None or resp[0] != status:
                ok = False
                break
            got = get_body(resp, head=raw.startswith(b"HEAD"))
            if got != body:
                ok = False
                break
        check(ok, f"6 pipelined requests ({mode}): responses separate, "
              "complete and in order")
        s.close()
    check(srv.stop() == 0, "the server exits cleanly")


LIMITS = [
    ("request line over 8 KiB", b"GET /" + b"a" * 8300 +
     b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    ("header section over 16 KiB", b"GET / HTTP/1.1\r\nHost: x\r\n" +
     b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 200) for i in range(90)) +
     b"\r\n", 431),
    ("101 header lines", b"GET / HTTP/1.1\r\nHost: x\r\n" +
     b"".join(b"X-%d: v\r\n" % i for i in range(100)) + b"\r\n", 431),
    ("Content-Length with Transfer-Encoding",
     b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("duplicate Content-Length", b"POST /count HTTP/1.1\r\nHost: x\r\n"
     b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("invalid Content-Length", b"POST /count HTTP/1.1\r\nHost: x\r\n"
     b"Content-Length: 3x\r\n\r\nabc", 400),
    ("unknown transfer coding", b"POST /count HTTP/1.1\r\nHost: x\r\n"
     b"Transfer-Encoding: gzip\r\n\r\n", 400),
    ("obs-fold continuation line", b"GET / HTTP/1.1\r\nHost: x\r\n"
     b"X-A: one\r\n two\r\n\r\n", 400),
    ("whitespace before a header's colon", b"GET / HTTP/1.1\r\nHost: x\r\n"
     b"X-A : v\r\n\r\n", 400),
    ("bare LF line endings", b"GET / HTTP/1.1\nHost: x\n\n", 400),
    ("missing Host on HTTP/1.1", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("a byte not allowed in the method", b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
     400),
    ("a NUL in a header value", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n"
     b"\r\n", 400),
    ("HTTP/2.0 request line", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    ("Content-Length over --max-body", b"POST /count HTTP/1.1\r\nHost: x\r\n"
     b"Content-Length: 2000\r\n\r\n", 413),
    ("chunked body over --max-body", b"POST /count HTTP/1.1\r\nHost: x\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n" + b"3e8\r\n" + b"z" * 1000 +
     b"\r\n" + b"3e8\r\n" + b"z" * 1000 + b"\r\n0\r\n\r\n", 413),
]


def group_limits(exe, wrapper):
    srv = Server(exe, wrapper, ["--threads", "1", "--max-body", "1500"])
    for what, raw, status in LIMITS:
        try:
            st, _, closed = exchange(srv.port, raw)
        except (ConnectionResetError, BrokenPipeError) as e:
            st, closed = f"reset ({e})", True
        check(st == status and closed,
              f"{what}: {status} and the connection closed (got {st}, "
              f"closed={closed})")
    # The server is still fine after all that.
    st, body, _ = exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\n"
                           b"Connection: close\r\n\r\n")
    check(st == 200 and body == b"hello", "still answering afterwards")
    check(srv.stop() == 0, "the server exits cleanly")


def group_deadlines(exe, wrapper):
    srv = Server(exe, wrapper, ["--threads", "1", "--head-ms", "1000",
                                "--idle-ms", "500"])
    # A client that trickles its head, a byte every 100 ms, gets 408 and is
    # closed when the head's time is up.
    s = connect(srv.port, 10)
    t0 = time.monotonic()
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"z" * 100
    got = b""
    t408 = None
    closed = False
    s.settimeout(0.1)
    for b in head:
        try:
            s.send(bytes([b]))  # goes on after the 408: the server lingers
        except OSError:
            break
        try:
            chunk = s.recv(4096)
            got += chunk
            if chunk == b"":
                closed = True
                break
        except socket.timeout:
            pass
        except OSError:
            closed = True
            break
        if t408 is None and got.startswith(b"HTTP/1.1 408"):
            t408 = time.monotonic() - t0
        if time.monotonic() - t0 > 8:
            break
    s.settimeout(5)
    try:
        while not closed:
            chunk = s.recv(4096)
            got += chunk
            closed = chunk == b""
    except OSError:
        closed = True
    if t408 is None and got.startswith(b"HTTP/1.1 408"):
        t408 = time.monotonic() - t0
    took = time.monotonic() - t0
    check(t408 is not None and 0.9 <= t408 <= 2.5,
          f"a trickling head is answered 408 after --head-ms "
          f"(at {t408} s)")
    check(closed and took <= 8, f"... and closed (after {took:.2f} s)")
    s.close()
    # An idle keep-alive connection is closed after --idle-ms.
    s = connect(srv.port, 10)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    f = s.makefile("rb")
    resp = read_response(f)
    get_body(resp)
    t0 = time.monotonic()
    end = f.read(1)
    took = time.monotonic() - t0
    check(end == b"" and 0.4 <= took <= 3.0,
          f"an idle keep-alive connection is closed after --idle-ms "
          f"(took {took:.2f} s)")
    s.close()
    check(srv.stop() == 0, "the server exits cleanly")


def load(port, conns, per_conn):
    """conns threads, each sending per_conn keep-alive requests."""
    ok = [0]
    errors = []
    lock = threading.Lock()

    def one():
        n = 0
        try:
            s = connect(port, 10)
            f = s.makefile("rb")
            for _ in range(per_conn):
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                resp = read_response(f)
                if resp and resp[0] == 200 and get_body(resp) == b"hello":
                    n += 1
            f.close()
            s.close()
        except (OSError, ValueError) as e:
            with lock:
                errors.append(f"after {n} requests: {e!r}")
        with lock:
            ok[0] += n

    ts = [threading.Thread(target=one) for _ in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=60)
    for e in errors[:5]:
        print(f"  client error {e}")
    return ok[0]


def group_threads(exe, wrapper):
    for extra in ([], ["--handoff"]):
        srv = Server(exe, wrapper, ["--threads", "2"] + extra)
        kind = "hand-off" if extra else "SO_REUSEPORT"
        check(any(l.startswith("threads: 2") for l in srv.lines),
              f"two loops ({kind})")
        got = load(srv.port, 20, 10)
        check(got == 200, f"200 requests over 20 connections ({kind}): "
              f"{got} answered")
        rc = srv.stop()
        stats = [l for l in srv.lines if l.startswith("stats:")]
        m = re.search(r"requests=(\d+)", stats[-1]) if stats else None
        check(rc == 0 and m and int(m.group(1)) == 200,
              f"clean exit, the threads' counts add up ({kind})")


def group_conncap(exe, wrapper):
    srv = Server(exe, wrapper, ["--threads", "1", "--max-conns", "2",
                                "--idle-ms", "10000"])
    a = connect(srv.port)
    b = connect(srv.port)
    a.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    fa = a.makefile("rb")
    get_body(read_response(fa))  # a is surely accepted
    b.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    fb = b.makefile("rb")
    get_body(read_response(fb))
    c = connect(srv.port)  # the kernel's backlog takes it
    c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    c.settimeout(0.5)
    try:
        early = c.recv(100)
    except socket.timeout:
        early = None
    check(early is None, "a third connection waits while the pool is full")
    fa.close()  # the socket closes once its file object is closed too
    a.close()
    c.settimeout(5)
    fc = c.makefile("rb")
    resp = read_response(fc)
    check(resp is not None and resp[0] == 200 and get_body(resp) == b"hello",
          "... and is served once a slot is released")
    b.close()
    c.close()
    check(srv.stop() == 0, "the server exits cleanly")


# examples/http_server.c: receive buffers per thread (min(--max-conns, 4096)).
RECV_BUFFERS = 4096


def unread_server_sockets(port):
    """(with no unread bytes, with some): the server's established
    sockets on port, by their receive queue (/proc/net/tcp)."""
    empty = full = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) != port or fields[3] != "01":
                continue
            if int(fields[4].split(":")[1], 16) == 0:
                empty += 1
            else:
                full += 1
    return empty, full


def group_bufwait(exe, wrapper):
    # More connections on one thread than it has receive buffers, each
    # holding half a head in one, then sending the rest: the connections
    # that find no buffer wait in line, and one that holds bytes must not
    # keep its buffer while it waits, or every buffer is kept and the
    # thread never serves anyone again (found by scripts/soak's harness).
    n = 5000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < n + 256:
        print(f"SKIP: needs {n + 256} open files, the hard limit is {hard}")
        sys.exit(77)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, n + 256), hard))
    srv = Server(exe, wrapper, ["--threads", "1"])
    fd_dir = f"/proc/{srv.p.pid}/fd"
    base = len(os.listdir(fd_dir))
    socks = []
    try:
        while len(socks) < n:  # batches within the listen backlog
            batch = [connect(srv.port, 10)
                     for _ in range(min(500, n - len(socks)))]
            for s in batch:
                s.sendall(b"GET / HTTP/1.1\r\nHo")
            socks += batch
            deadline = time.monotonic() + 10  # until the server has them
            while (len(os.listdir(fd_dir)) < base + len(socks) and
                   time.monotonic() < deadline):
                time.sleep(0.01)
        # The first halves are in before the rest comes (every buffer held).
        deadline = time.monotonic() + 10
        while (unread_server_sockets(srv.port)[0] < RECV_BUFFERS and
               time.monotonic() < deadline):
            time.sleep(0.01)
        for s in socks:
            s.sendall(b"st: x\r\n\r\n")
        sel = selectors.DefaultSelector()
        for s in socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        answered, left = 0, n
        deadline = time.monotonic() + 20
        while left and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.5):
                try:
                    data = key.fileobj.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                answered += data.startswith(b"HTTP/1.1 200")
                sel.unregister(key.fileobj)
                left -= 1
        check(answered == n, f"{n} connections on one thread with "
              f"{RECV_BUFFERS} receive buffers, each sending its head in "
              f"two parts: all answered ({answered})")
        try:
            st, body, _ = exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x"
                                   b"\r\nConnection: close\r\n\r\n")
        except OSError as e:
            st, body = repr(e), b""
        check(st == 200 and body == b"hello",
              f"a new client is answered (got {st})")
    finally:
        for s in socks:
            s.close()
        rc = srv.stop()
    stats = [l for l in srv.lines if l.startswith("stats:")]
    m = re.search(r"enobufs=(\d+)", stats[-1]) if stats else None
    check(rc == 0 and m and int(m.group(1)) > 0,
          f"clean exit; connections waited for a buffer "
          f"({stats[-1] if stats else 'no stats'})")


def group_wrk(exe, wrapper):
    srv = Server(exe, wrapper, [])
    r = subprocess.run(["wrk", "-t1", "-c100", "-d5s",
                        f"http://127.0.0.1:{srv.port}/"],
                       capture_output=True, text=True, timeout=60)
    print(r.stdout)
    m = re.search(r"(\d+) requests in", r.stdout)
    check(r.returncode == 0 and m and int(m.group(1)) > 0,
          "wrk -t1 -c100 -d5s completes requests")
    check("Socket errors" not in r.stdout, "wrk: 0 socket errors")
    check("Non-2xx" not in r.stdout, "wrk: 0 non-2xx responses")
    check(srv.stop() == 0, "the server exits cleanly")


GROUPS = {
    "routes": group_routes,
    "pipelining": group_pipelining,
    "limits": group_limits,
    "deadlines": group_deadlines,
    "threads": group_threads,
    "conncap": group_conncap,
    "wrk": group_wrk,
    "bufwait": group_bufwait,
}

WRAPPED = False

if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in GROUPS:
        raise SystemExit(__doc__)
    wrapper = []
    if len(sys.argv) > 4 and sys.argv[3] == "--wrapper":
        wrapper = sys.argv[4].split()
        WRAPPED = True
    print(f"{sys.argv[1]}:")
    GROUPS[sys.argv[1]](sys.argv[2], wrapper)
    if FAILS:
        print(f"{len(FAILS)} failed")
        sys.exit(1)
    print("all passed")
