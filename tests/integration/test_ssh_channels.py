"""Channels through the SSH gateway: forwarding by role, the client going away mid-session."""

import json
import random
import socket
import subprocess
import threading
import time

import pytest

from conftest import free_port, run, wait_until


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


def _audit_lines(gw, identity, *needles, timeout=10):
    """The audit lines of `identity` holding every needle, waiting for them: the trail is written
    by a thread of its own, a moment after the event."""
    needles = (f'"name":"{identity}"', *needles)

    def find():
        lines = [line for p in (gw.dir / "audit").glob("*.jsonl")
                 for line in p.read_text().splitlines() if all(n in line for n in needles)]
        return lines or None
    return wait_until(find, timeout, interval=0.1, what=f"audit lines with {needles}")


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
    name, key = _identity(ssh_gateway, new_name, "ops", tmp_path)
    srv = _echo_server()
    try:
        assert _forward_and_talk(ssh_gateway, key, srv.getsockname()[1]) == b""
    finally:
        srv.close()
    assert _audit_lines(ssh_gateway, name, "forward-refused")


def test_forwarding_works_and_is_recorded_under_local(ssh_gateway, new_name, tmp_path):
    name, key = _identity(ssh_gateway, new_name, "fwd", tmp_path)
    srv = _echo_server()
    try:
        port = srv.getsockname()[1]
        assert _forward_and_talk(ssh_gateway, key, port) == b"echo:ping"
    finally:
        srv.close()
    assert _audit_lines(ssh_gateway, name, f'"destination":"127.0.0.1:{port}"')


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


@pytest.fixture
def agent(tmp_path):
    """An ssh-agent of the test's own (foreground, so the test ends it) holding one key."""
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        wait_until(sock.exists, 10, what="ssh-agent's socket")
        key = tmp_path / "agent_key"
        comment = f"sp-agent-key-{random.randrange(10**9)}"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                        "-f", str(key)], check=True)
        subprocess.run(["ssh-add", "-q", str(key)], check=True, capture_output=True,
                       env={"SSH_AUTH_SOCK": str(sock), "PATH": "/usr/bin:/bin"})
        yield sock, comment, proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _agent_opts(gw, key, sock):
    # ssh forwards only the agent at SSH_AUTH_SOCK, which the harness's IdentityAgent=none
    # would clear; IdentitiesOnly still keeps the agent's key out of the authentication.
    opts, dest = gw.ssh_base(key)
    opts = [f"IdentityAgent={sock}" if o == "IdentityAgent=none" else o for o in opts]
    return [*opts, "-A", dest]


def _list_agent_keys(gw, key, sock):
    return run(["ssh", *_agent_opts(gw, key, sock), "ssh-add -l"], check=False)


def _events(gw, session_id):
    out = gw.cli("export", session_id, "--format", "json").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_agent_forwarding_works_and_is_recorded_under_agent(ssh_gateway, new_name, tmp_path,
                                                            agent):
    sock, comment, _ = agent
    name, key = _identity(ssh_gateway, new_name, "agentfwd", tmp_path)
    r = _list_agent_keys(ssh_gateway, key, sock)
    assert r.returncode == 0, r.stderr
    assert comment in r.stdout and "ED25519" in r.stdout
    sess = ssh_gateway.session_of(name, ended=True, timeout=20)
    events = _events(ssh_gateway, sess["id"])
    opened = [e["fields"][0] for e in events
              if e["type"] == "channel_open" and e["fields"][1:] == ["auth-agent"]]
    assert len(opened) == 1, events
    ch = opened[0]
    assert [e["fields"][1] for e in events
            if e["type"] == "forward" and e["fields"][0] == ch] == ["agent"], events
    closed = [e["fields"] for e in events if e["type"] == "channel_close" and e["fields"][0] == ch]
    assert len(closed) == 1 and int(closed[0][1]) > 0 and int(closed[0][2]) > 0, events
    _audit_lines(ssh_gateway, name, '"forward-end"')
    agent_events = [json.loads(line)
                    for line in _audit_lines(ssh_gateway, name, '"forward_kind":"agent"')]
    codes = [e["metadata"]["event_code"] for e in agent_events]
    assert codes == ["forward", "forward-end"], agent_events
    assert agent_events[1]["bytes_in"] > 0 and agent_events[1]["bytes_out"] > 0


@pytest.mark.parametrize("role", ["ops", "fwd"])
def test_agent_forwarding_refused_unless_the_role_allows(ssh_gateway, new_name, tmp_path, agent,
                                                         role):
    sock, comment, _ = agent
    name, key = _identity(ssh_gateway, new_name, role, tmp_path)
    r = _list_agent_keys(ssh_gateway, key, sock)
    assert r.returncode != 0 and comment not in r.stdout, (r.stdout, r.stderr)
    assert "authentication agent" in r.stderr
    sess = ssh_gateway.session_of(name, ended=True, timeout=20)
    text = json.dumps(_events(ssh_gateway, sess["id"]))
    assert "agent forwarding refused" in text and '"auth-agent"' not in text, text[:4000]
    assert _audit_lines(ssh_gateway, name, "forward-refused", '"forward_kind":"agent"')


def test_agent_channel_the_client_refuses_is_closed(ssh_gateway, new_name, tmp_path, agent):
    """The agent goes away after ssh checked for it: the client refuses the agent channel the
    gateway opens, so the target's program sees a failed agent and the session goes on."""
    sock, comment, agent_proc = agent
    name, key = _identity(ssh_gateway, new_name, "agentfwd", tmp_path)
    go = f"/tmp/sp-agent-go-{name}"
    remote = (f"echo started; while [ ! -e {go} ]; do sleep 0.1; done; "
              "ssh-add -l; echo ssh-add-rc=$?")
    proc = subprocess.Popen(["ssh", *_agent_opts(ssh_gateway, key, sock), remote],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "started"
        agent_proc.terminate()
        agent_proc.wait(timeout=10)
        sock.unlink(missing_ok=True)
        subprocess.run(["touch", go], check=True)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        subprocess.run(["rm", "-f", go])
    assert proc.returncode == 0, err
    assert comment not in out and "ssh-add-rc=0" not in out and "ssh-add-rc=" in out, (out, err)
    _audit_lines(ssh_gateway, name, "forward-refused", "the client refused the agent channel")
    sess = ssh_gateway.session_of(name, ended=True, timeout=20)
    events = _events(ssh_gateway, sess["id"])
    assert not [e for e in events if e["type"] == "channel_open" and "auth-agent" in e["fields"]]
    assert any(e["type"] == "exit" and e["fields"][1:] == ["status", "0"] for e in events), events
