"""What the gateway does with unusual but legal, and with hostile, startup traffic; cancel
routing; and memory under a client that stops reading. Spoken with the raw client in
pgwire.py, since libpq hides these details."""

import re
import socket
import struct
import time

import pytest

from pgwire import (PROTOCOL_3_0, SSL_REQUEST_CODE, Session, _Conn, _fields, _startup_packet,
                    attempt, cancel, tls_socket)

GSSENC_REQUEST = struct.pack("!II", 8, 80877104)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def login_works(gateway, name, token):
    out = attempt(gateway.port, {"user": name, "database": "clinic"}, token, query="select 1")
    assert out.error is None and out.rows == [["1"]], out


def test_bytes_sent_with_sslrequest_close_the_connection(gateway, new_name):
    name = new_name()
    token = gateway.identity_with_token(name)
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    # SSLRequest and a plaintext StartupMessage in one segment: the startup must never be
    # taken as if it had come inside TLS.
    sock.sendall(struct.pack("!II", 8, SSL_REQUEST_CODE) + _startup_packet({"user": name}))
    assert sock.recv(16) == b""
    sock.close()
    login_works(gateway, name, token)


def test_gssenc_answered_n_then_tls_login(gateway, new_name):
    name = new_name()
    token = gateway.identity_with_token(name)
    sock = tls_socket(gateway.port, before=GSSENC_REQUEST)
    sock.close()
    login_works(gateway, name, token)


def test_unknown_protocol_version_and_second_sslrequest(gateway):
    sock = tls_socket(gateway.port)
    body = struct.pack("!I", 4 << 16) + b"user\0x\0\0"
    sock.sendall(struct.pack("!I", len(body) + 4) + body)
    kind, err = _Conn(sock).recv_msg()
    assert kind == b"E" and _fields(err)["C"] == "0A000", err
    sock.close()

    sock = tls_socket(gateway.port)
    sock.sendall(struct.pack("!II", 8, SSL_REQUEST_CODE))
    kind, err = _Conn(sock).recv_msg()
    assert kind == b"E" and _fields(err)["C"] == "08P01", err
    sock.close()


@pytest.mark.parametrize("length", [0, 7, 2**31 - 1, 2**31, 2**32 - 1, 10 * 1024 * 1024])
def test_bad_startup_lengths_get_protocol_errors(gateway, length):
    sock = tls_socket(gateway.port)
    sock.sendall(struct.pack("!I", length) + struct.pack("!I", PROTOCOL_3_0))
    kind, err = _Conn(sock).recv_msg()
    assert kind == b"E" and _fields(err)["C"] == "08P01", err
    sock.close()


def test_unknown_identity_gets_a_stable_fake_salt(gateway, new_name):
    def server_first(user):
        out = attempt(gateway.port, {"user": user, "database": "clinic"}, "spt_x_y")
        assert out.code == "28P01", out
        return dict(kv.split("=", 1) for kv in out.server_first.split(","))

    ghost, other = new_name("ghost"), new_name("ghost")
    a, b, c = server_first(ghost), server_first(ghost), server_first(other)
    assert a["s"] == b["s"] and a["s"] != c["s"]
    assert a["i"] == "4096"
    real = new_name()
    gateway.identity_with_token(real)
    assert server_first(real)["i"] == a["i"]  # no difference in the iteration count either


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext-cancel", "tls-cancel"])
def test_cancel_reaches_only_its_own_session(gateway, new_name, tls):
    name = new_name()
    token = gateway.identity_with_token(name)
    s = Session(gateway.port, {"user": name, "database": "clinic"}, token)
    pid, key = s.out.backend_key
    s.send_query("select pg_sleep(30)")
    time.sleep(0.5)
    cancel(gateway.port, pid, key ^ 1, tls)  # a guessed key does nothing
    s.sock.settimeout(1.5)
    with pytest.raises(socket.timeout):
        s.conn.recv_msg()
    s.sock.settimeout(10)
    started = time.monotonic()
    cancel(gateway.port, pid, key, tls)
    err = s.read_until_ready()
    assert err and err["C"] == "57014", err
    assert time.monotonic() - started < 2
    s.close()


@pytest.mark.timeout(120)
def test_client_that_stops_reading_keeps_gateway_memory_bounded(gateway, new_name):
    name = new_name()
    token = gateway.identity_with_token(name)
    s = Session(gateway.port, {"user": name, "database": "clinic"}, token)
    before = rss_kib(gateway.proc.pid)
    # 1 GiB of rows that the client never reads (the backend blocks once the gateway stops
    # reading it, so this takes no longer than a smaller result would).
    s.send_query("select repeat('x', 1048576) from generate_series(1, 1024)")
    time.sleep(4)
    grown = rss_kib(gateway.proc.pid) - before
    assert grown < 48 * 1024, f"gateway RSS grew by {grown} KiB for a client that reads nothing"
    s.close()
    other = new_name()
    login_works(gateway, other, gateway.identity_with_token(other))


def test_silent_client_is_closed_by_handshake_timeout(gateway):
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=30)
    started = time.monotonic()
    kind, err = _Conn(sock).recv_msg()  # no TLS was asked for, so the reason comes in clear
    waited = time.monotonic() - started
    assert kind == b"E" and _fields(err)["C"] == "08006", err
    assert sock.recv(16) == b""
    assert 8 <= waited <= 15, waited  # handshake_timeout = 10s in the test configuration
    sock.close()


def test_client_gone_right_after_its_proof_leaves_nothing_live(gateway, new_name):
    from pgwire import _scram_client_final, _scram_client_first

    name = new_name()
    token = gateway.identity_with_token(name)
    for _ in range(3):
        sock = tls_socket(gateway.port)
        conn = _Conn(sock)
        conn.send(_startup_packet({"user": name, "database": "clinic"}))
        kind, body = conn.recv_msg()
        assert kind == b"R" and struct.unpack("!I", body[:4])[0] == 10
        nonce, first_bare = _scram_client_first()
        first = ("n,," + first_bare).encode()
        conn.send_msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first)
        kind, body = conn.recv_msg()
        conn.send_msg(b"p", _scram_client_final(token, first_bare, body[4:].decode(),
                                                nonce).encode())
        sock.close()  # gone before the session is ready

    def nothing_live():
        return not [s for s in gateway.sessions(live=True) if s["identity"] == name]
    wait_for(nothing_live, 10)
    # With no session holding it, the lease goes at lease_idle like any unused one.
    def role_gone():
        with gateway.pg.connect() as c:
            return not c.execute("select 1 from pg_roles where rolname like %s",
                                 (f"sp_{name}_%",)).fetchall()
    wait_for(role_gone, 15)


def wait_for(predicate, timeout):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{predicate.__name__} not true after {timeout}s"
        time.sleep(0.2)


def test_query_pipelined_behind_the_scram_proof_is_answered(gateway, new_name):
    from pgwire import _scram_client_final, _scram_client_first

    name = new_name()
    token = gateway.identity_with_token(name)
    sock = tls_socket(gateway.port)
    conn = _Conn(sock)
    conn.send(_startup_packet({"user": name, "database": "clinic"}))
    conn.recv_msg()
    nonce, first_bare = _scram_client_first()
    first = ("n,," + first_bare).encode()
    conn.send_msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first)
    kind, body = conn.recv_msg()
    final = _scram_client_final(token, first_bare, body[4:].decode(), nonce).encode()
    query = b"select 'pipelined'\0"
    # Proof and query in one segment.
    conn.send(b"p" + struct.pack("!I", len(final) + 4) + final +
              b"Q" + struct.pack("!I", len(query) + 4) + query)
    seen = []
    while True:
        kind, body = conn.recv_msg()
        seen.append(kind)
        if kind == b"D":
            assert b"pipelined" in body
        if kind == b"E":
            raise AssertionError(_fields(body))
        if kind == b"Z" and b"D" in seen:
            break
    sock.close()


def test_connections_over_max_client_conn_get_53300(gateway, new_name):
    name = new_name()
    token = gateway.identity_with_token(name)
    gateway.main_extra["max_client_conn"] = "3"
    gateway.write_config()
    gateway.reload()
    held = []
    try:
        time.sleep(0.5)
        held = [tls_socket(gateway.port) for _ in range(3)]  # idle in startup: they count
        out = attempt(gateway.port, {"user": name, "database": "clinic"}, token)
        assert out.code == "53300", out
    finally:
        for sock in held:
            sock.close()
        del gateway.main_extra["max_client_conn"]
        gateway.write_config()
        gateway.reload()
        time.sleep(0.5)
    login_works(gateway, name, token)


def test_message_claiming_a_gigabyte_gets_08p01(gateway, new_name):
    """A logged-in client sends a Query whose length word claims 1 GB, then stops. The
    gateway answers at the header, in the protocol's own form, and relays none of it; the
    session's recording ends with the reason; everyone else goes on."""
    name = new_name()
    token = gateway.identity_with_token(name)
    s = Session(gateway.port, {"user": name, "database": "clinic"}, token)
    s.send_query("select 'before'")
    assert s.read_until_ready() is None
    s.conn.send(b"Q" + struct.pack("!I", 1 << 30) + b"SELECT 1")
    kind, body = s.conn.recv_msg()
    assert kind == b"E"
    fields = _fields(body)
    assert fields["C"] == "08P01" and "1 GB" in fields["M"], fields
    with pytest.raises(ConnectionError):
        s.conn.recv_msg()
    s.close()
    sess = gateway.session_of(name, ended=True)
    assert sess["end_reason"] == "protocol-error"
    shown = gateway.cli("replay", sess["id"]).stdout
    assert "select 'before'" in shown
    other = new_name()
    login_works(gateway, other, gateway.identity_with_token(other))
