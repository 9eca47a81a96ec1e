"""Channels through the SSH gateway: forwarding by role, the client going away mid-session."""

import socket
import subprocess
import threading
import time

import pytest

from conftest import free_port, wait_until


def _identity(gw, new_name, role, tmp_path):
    name = new_name(role)
    gw.add_identity(name)
    gw.grant(name, role)
    return name, gw.ssh_cert(name, tmp_path / "keys")


def _echo_server():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            data = c.recv(100)
            c.sendall(b"echo:" + data)
            c.close()
    threading.Thread(target=serve, daemon=True).start()
    return srv


def _forward_and_talk(gw, key, echo_port):
    local = free_port()
    opts, dest = gw.ssh_base(key)
    proc = subprocess.Popen(["ssh", *opts, "-N", "-o", "ExitOnForwardFailure=yes",
                             "-L", f"{local}:127.0.0.1:{echo_port}", dest],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        def connect():
            try:
                return socket.create_connection(("127.0.0.1", local), timeout=2)
            except OSError:
                return None
        s = wait_until(connect, 15, what="the forwarded port")
        try:
            s.sendall(b"ping")
            s.settimeout(10)
            return s.recv(100)
        except ConnectionResetError:
            return b""  # the client closes the local end when the channel is refused
        finally:
            s.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_forwarding_refused_under_none(ssh_gateway, new_name, tmp_path):
    _, key = _identity(ssh_gateway, new_name, "ops", tmp_path)
    srv = _echo_server()
    try:
        assert _forward_and_talk(ssh_gateway, key, srv.getsockname()[1]) == b""
    finally:
        srv.close()
    audit = "".join(p.read_text() for p in (ssh_gateway.dir / "audit").glob("*.jsonl"))
    assert "forward-refused" in audit


def test_forwarding_works_and_is_recorded_under_local(ssh_gateway, new_name, tmp_path):
    name, key = _identity(ssh_gateway, new_name, "fwd", tmp_path)
    srv = _echo_server()
    try:
        port = srv.getsockname()[1]
        assert _forward_and_talk(ssh_gateway, key, port) == b"echo:ping"
    finally:
        srv.close()
    audit = "".join(p.read_text() for p in (ssh_gateway.dir / "audit").glob("*.jsonl"))
    assert f'"destination": "127.0.0.1:{port}"' in audit or f'"destination":"127.0.0.1:{port}"' in audit


def test_client_killed_mid_session(ssh_gateway, new_name, tmp_path):
    name, key = _identity(ssh_gateway, new_name, "ops", tmp_path)
    marker = tmp_path / "hup"
    opts, dest = ssh_gateway.ssh_base(key)
    remote = ("trap 'echo hup > /tmp/sp-hup-" + name + "; exit 0' HUP; echo started; "
              "while :; do sleep 0.2; done")
    proc = subprocess.Popen(["ssh", "-tt", *opts, dest, remote], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert b"started" in proc.stdout.readline()
    proc.kill()
    proc.wait(timeout=10)
    wait_until(lambda: subprocess.run(["test", "-f", f"/tmp/sp-hup-{name}"]).returncode == 0, 10,
               what="the target's shell to see the hang-up")
    sess = ssh_gateway.session_of(name, ended=True, timeout=10)
    assert sess["end_reason"] == "client-closed"
    subprocess.run(["rm", "-f", f"/tmp/sp-hup-{name}"])
