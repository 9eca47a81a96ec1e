"""Hostile and broken SSH openings: the SSH listener closes each one, keeps serving everyone
else, and its descriptors return to where they were."""

import os
import random
import socket
import struct
import time

import pytest

from conftest import run, wait_until
from sshenv import TARGET_LOGIN


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def garbage(rng):
    """One broken opening: not SSH at all, an old or cut version line, a packet whose length
    lies, random bytes after a good version line, a client that leaves at once."""
    kind = rng.randrange(6)
    if kind == 0:
        return b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    if kind == 1:
        return b"SSH-1.5-ancient\r\n"
    if kind == 2:
        return b"SSH-2.0-" + b"x" * 300  # a version line that never ends
    if kind == 3:
        return b"SSH-2.0-liar\r\n" + struct.pack("!I", rng.choice([0, 5, 2**31, 2**32 - 1])) + \
            bytes(rng.randrange(256) for _ in range(32))
    if kind == 4:
        return b"SSH-2.0-noise\r\n" + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 600)))
    return b""


@pytest.mark.timeout(240)
def test_malformed_ssh_openings_leave_no_trace(ssh_gateway, new_name, tmp_path):
    name = new_name("ssh")
    ssh_gateway.add_identity(name)
    ssh_gateway.grant(name, "ops")
    key = ssh_gateway.ssh_cert(name, tmp_path / "keys")
    pid = ssh_gateway.proc.pid
    time.sleep(1)
    base = fds(pid)
    rng = random.Random(11)
    t0 = time.monotonic()
    for _ in range(300):
        sock = socket.create_connection(("127.0.0.1", ssh_gateway.ssh_port), timeout=2)
        try:
            sock.sendall(garbage(rng))
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):
                pass  # the gateway's version line, maybe a disconnect, then the close
        except OSError:
            pass  # a reset, or a cut opening left waiting: the handshake timeout ends it
        finally:
            sock.close()
    flood = time.monotonic() - t0
    # Everyone else is still served, during and after.
    r = ssh_gateway.ssh(key, "echo still-serving")
    assert r.returncode == 0 and r.stdout.strip() == "still-serving", r.stderr
    wait_until(lambda: fds(pid) <= base, 30, interval=0.5, what="descriptors back to baseline")
    print(f"\n300 malformed SSH openings in {flood:.2f}s")


def test_refused_ssh_login_gets_a_reason(ssh_gateway):
    """A user name that is not LOGIN+TARGET: OpenSSH's client sees the refusal and says so."""
    opts, _ = ssh_gateway.ssh_base()
    r = run(["ssh", *opts, "-o", "PreferredAuthentications=password",
             f"{TARGET_LOGIN}@127.0.0.1", "true"], check=False)
    assert r.returncode == 255
    assert "Permission denied" in r.stderr
