"""A minimal PostgreSQL frontend for checking what the gateway answers during startup.

libpq folds startup errors into one text without the SQLSTATE; the tests need the exact
code and message fields, so this speaks the protocol itself: SSLRequest, StartupMessage,
SCRAM-SHA-256 (no channel binding), then an optional simple query.
"""

import base64
import hashlib
import hmac
import os
import socket
import ssl
import struct

SSL_REQUEST_CODE = 80877103
PROTOCOL_3_0 = 196608


class Outcome:
    """What a startup attempt ended with: error fields, or success with notices and rows."""

    def __init__(self):
        self.error = None  # dict of ErrorResponse fields: 'C' code, 'M' message, 'S' severity
        self.notices = []  # list of NoticeResponse field dicts
        self.params = {}  # ParameterStatus
        self.rows = []  # rows of the optional query, as lists of str/None
        self.ssl_answer = None  # b'S' or b'N' when TLS was requested
        self.backend_key = None  # (pid, key) from BackendKeyData
        self.server_first = None  # the SCRAM server-first-message (salt, iterations)

    @property
    def code(self):
        return self.error.get("C") if self.error else None

    @property
    def message(self):
        return self.error.get("M") if self.error else None

    def __repr__(self):
        return f"Outcome(error={self.error!r}, notices={len(self.notices)}, rows={self.rows!r})"


def _fields(body):
    out = {}
    for part in body.split(b"\0"):
        if part:
            out[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return out


class _Conn:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def send_msg(self, kind, body):
        self.send(kind + struct.pack("!I", len(body) + 4) + body)

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def recv_msg(self):
        head = self._read(5)
        length = struct.unpack("!I", head[1:])[0]
        return head[:1], self._read(length - 4)


def _scram_client_first():
    nonce = base64.b64encode(os.urandom(18)).decode()
    return nonce, f"n=,r={nonce}"


def _scram_client_final(password, client_first_bare, server_first, nonce):
    attrs = dict(item.split("=", 1) for item in server_first.split(","))
    if not attrs["r"].startswith(nonce):
        raise ValueError("server nonce does not extend the client nonce")
    salt = base64.b64decode(attrs["s"])
    iterations = int(attrs["i"])
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = f"c=biws,r={attrs['r']}"
    auth_message = f"{client_first_bare},{server_first},{without_proof}"
    signature = hmac.new(stored_key, auth_message.encode(), hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    return f"{without_proof},p={base64.b64encode(proof).decode()}"


def _startup_packet(params):
    body = struct.pack("!I", PROTOCOL_3_0)
    for k, v in params.items():
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def _authenticate(conn, password, out):
    """Runs the authentication exchange; returns True at ReadyForQuery, False on error."""
    nonce = first_bare = None
    while True:
        kind, body = conn.recv_msg()
        if kind == b"E":
            out.error = _fields(body)
            return False
        if kind == b"N":
            out.notices.append(_fields(body))
        elif kind == b"S":
            k, v = body.split(b"\0")[:2]
            out.params[k.decode()] = v.decode()
        elif kind == b"Z":
            return True
        elif kind == b"K":
            out.backend_key = struct.unpack("!II", body[:8])
        elif kind == b"R":
            code = struct.unpack("!I", body[:4])[0]
            if code == 10:  # SASL: mechanisms follow
                mechs = [m.decode() for m in body[4:].split(b"\0") if m]
                if "SCRAM-SHA-256" not in mechs:
                    raise ValueError(f"no SCRAM-SHA-256 among {mechs}")
                nonce, first_bare = _scram_client_first()
                first = ("n,," + first_bare).encode()
                conn.send_msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first)
            elif code == 11:  # SASLContinue
                out.server_first = body[4:].decode()
                final = _scram_client_final(password, first_bare, body[4:].decode(), nonce)
                conn.send_msg(b"p", final.encode())
            elif code == 3:  # cleartext password
                conn.send_msg(b"p", password.encode() + b"\0")
            elif code not in (0, 12):
                raise ValueError(f"unsupported authentication request {code}")


def _query(conn, sql, out):
    conn.send_msg(b"Q", sql.encode() + b"\0")
    while True:
        kind, body = conn.recv_msg()
        if kind == b"D":
            ncols = struct.unpack("!H", body[:2])[0]
            pos, row = 2, []
            for _ in range(ncols):
                n = struct.unpack("!i", body[pos : pos + 4])[0]
                pos += 4
                if n < 0:
                    row.append(None)
                else:
                    row.append(body[pos : pos + n].decode())
                    pos += n
            out.rows.append(row)
        elif kind == b"E":
            out.error = _fields(body)
        elif kind == b"N":
            out.notices.append(_fields(body))
        elif kind == b"Z":
            return


def attempt(port, params, password="", tls=True, cafile=None, query=None, host="127.0.0.1",
            timeout=15):
    """Connects, authenticates with `password`, optionally runs `query`, and says how it went.

    params is the StartupMessage (user, database, options, replication, ...).
    """
    out = Outcome()
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        if tls:
            sock.sendall(struct.pack("!II", 8, SSL_REQUEST_CODE))
            out.ssl_answer = sock.recv(1)
            if out.ssl_answer != b"S":
                raise ConnectionError(f"server declined TLS: {out.ssl_answer!r}")
            ctx = ssl.create_default_context(cafile=cafile) if cafile else ssl._create_unverified_context()
            sock = ctx.wrap_socket(sock, server_hostname=host)
        conn = _Conn(sock)
        conn.send(_startup_packet(params))
        if _authenticate(conn, password, out) and query is not None:
            _query(conn, query, out)
        if out.error is None:
            conn.send_msg(b"X", b"")
        return out
    finally:
        sock.close()


def tls_socket(port, host="127.0.0.1", timeout=15, before=b""):
    """A TLS connection to the gateway after an SSLRequest (optionally preceded by `before`)."""
    sock = socket.create_connection((host, port), timeout=timeout)
    if before:
        sock.sendall(before)
        answer = sock.recv(1)
        if answer != b"N":
            raise ConnectionError(f"expected N to {before!r}, got {answer!r}")
    sock.sendall(struct.pack("!II", 8, SSL_REQUEST_CODE))
    if sock.recv(1) != b"S":
        raise ConnectionError("server declined TLS")
    return ssl._create_unverified_context().wrap_socket(sock, server_hostname=host)


class Session:
    """An authenticated raw session kept open, for cancel and backpressure checks."""

    def __init__(self, port, params, password, timeout=15):
        self.out = Outcome()
        self.sock = tls_socket(port, timeout=timeout)
        self.conn = _Conn(self.sock)
        self.conn.send(_startup_packet(params))
        if not _authenticate(self.conn, password, self.out):
            raise ConnectionError(f"login failed: {self.out.error}")

    def send_query(self, sql):
        self.conn.send_msg(b"Q", sql.encode() + b"\0")

    def read_until_ready(self):
        """Reads one query's answer; returns the ErrorResponse fields or None."""
        error = None
        while True:
            kind, body = self.conn.recv_msg()
            if kind == b"E":
                error = _fields(body)
            elif kind == b"Z":
                return error

    def close(self):
        self.sock.close()


def cancel(port, pid, key, tls):
    """Sends a CancelRequest on a new connection, in plaintext or inside TLS."""
    msg = struct.pack("!IIII", 16, 80877102, pid, key)
    sock = tls_socket(port) if tls else socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(msg)
        sock.recv(1)  # the gateway closes without an answer, as PostgreSQL does
    except (ConnectionError, OSError):
        pass
    finally:
        sock.close()
