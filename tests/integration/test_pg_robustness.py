"""The gateway under bad input and failing parts: every client gets its error in the
protocol's own form, the gateway keeps serving others, and nothing leaks."""

import os
import random
import socket
import struct
import time

import psycopg
import pytest

from conftest import wait_until
from pgwire import SSL_REQUEST_CODE, attempt, tls_socket


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("VmRSS:")))


def garbage(rng):
    """One malformed opening, in clear or inside TLS: lengths that lie, unknown codes, cut
    packets, NUL and invalid UTF-8 in names."""
    kind = rng.randrange(6)
    if kind == 0:
        return False, struct.pack("!I", rng.choice([0, 7, 2**31 - 1, 10 * 2**20])) + b"\0" * 4
    if kind == 1:
        return False, struct.pack("!II", 8, rng.randrange(2**32))
    if kind == 2:
        return True, struct.pack("!II", 8, SSL_REQUEST_CODE)  # a second SSLRequest in TLS
    if kind == 3:
        body = struct.pack("!I", 196608) + b"user\0\xff\xfe\x00bad\0\0"
        return True, struct.pack("!I", len(body) + 4) + body
    if kind == 4:
        return True, struct.pack("!I", 1000) + struct.pack("!I", 196608) + b"user\0cut"
    return False, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))


@pytest.mark.timeout(240)
def test_a_thousand_malformed_connections_leave_no_trace(gateway, new_name):
    name = new_name()
    token = gateway.identity_with_token(name)
    bystander = gateway.connect(name, token)
    pid = gateway.proc.pid
    time.sleep(1)
    base_fds, base_rss = fds(pid), rss_kib(pid)
    rng = random.Random(7)
    for _ in range(1000):
        in_tls, data = garbage(rng)
        sock = tls_socket(gateway.port, timeout=2) if in_tls else \
            socket.create_connection(("127.0.0.1", gateway.port), timeout=2)
        try:
            sock.sendall(data)
            if not in_tls:
                sock.shutdown(socket.SHUT_WR)  # a cut packet then ends, as a dying client's does
            if data[:4] != struct.pack("!I", 1000):  # a cut packet inside TLS gets no answer
                sock.recv(4096)  # an ErrorResponse, or the close
        except (OSError, ConnectionError):
            pass  # a close, or a cut TLS packet left waiting: the gateway times it out
        finally:
            sock.close()
    assert bystander.execute("select 1").fetchone()[0] == 1
    # Closing sessions linger up to two seconds before their memory goes.
    wait_until(lambda: fds(pid) <= base_fds, 15, what="descriptors back to baseline")
    if not gateway.sanitized:  # ASan's allocator quarantines freed memory: RSS says nothing
        assert rss_kib(pid) - base_rss < 16 * 1024, (base_rss, rss_kib(pid))
    bystander.close()


@pytest.mark.timeout(120)
def test_connections_that_never_finish_the_handshake_are_closed(gateway, new_name):
    pid = gateway.proc.pid
    base = fds(pid)
    held = []
    for i in range(2000):
        s = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
        if i % 2:
            s.sendall(struct.pack("!II", 8, SSL_REQUEST_CODE))  # then nothing
        held.append(s)
    name = new_name()
    out = attempt(gateway.port, {"user": name, "database": "clinic"}, "x")
    assert out.code == "28P01", out  # still answering others
    # handshake_timeout = 10s in the test configuration
    wait_until(lambda: fds(pid) <= base + 10, 30, interval=0.5, what="flood closed")
    for s in held:
        s.close()


@pytest.mark.timeout(120)
def test_upstream_restart_mid_session(gateway, new_name):
    name = new_name()
    token = gateway.identity_with_token(name)
    conn = gateway.connect(name, token)
    assert conn.execute("select 1").fetchone()[0] == 1
    live = gateway.session_of(name, ended=False)
    gateway.pg.stop()
    try:
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
        out = attempt(gateway.port, {"user": name, "database": "clinic"}, token, timeout=30)
        assert out.code and out.code.startswith("08"), out  # a clear error while it is down
    finally:
        gateway.pg.start()
        conn.close()
    row = next(r for r in gateway.sessions() if r["id"] == live["id"])
    assert row["end_reason"] == "server-closed", row

    def works():
        return attempt(gateway.port, {"user": name, "database": "clinic"}, token,
                       query="select 1").rows == [["1"]]
    wait_until(works, 30, interval=1, what="sessions work again after the restart")
