"""An interactive SSH session through the gateway, driven like a person would: OpenSSH
`ssh -tt` inside a real terminal (a detached tmux pane), commands typed with `tmux send-keys`,
the window resized. The recording must show what was typed (when the role records input),
the resize and the output, both in `sallyport replay --no-wait` and in the asciicast export.
"""

import json
import random
import re
import shutil
import subprocess
import time

import pytest

from conftest import wait_until

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Pane:
    """One tmux server of our own (its socket in the test's directory) with one pane."""

    def __init__(self, sock, command):
        self.sock = str(sock)
        self.tmux("new-session", "-d", "-x", "80", "-y", "24", "-s", "sp", *command)

    def tmux(self, *args, check=True):
        return subprocess.run(["tmux", "-S", self.sock, *args], capture_output=True, text=True,
                              timeout=20, check=check)

    def text(self):
        r = self.tmux("capture-pane", "-p", "-J", "-S", "-200", "-t", "sp", check=False)
        return r.stdout if r.returncode == 0 else ""

    def type(self, text):
        self.tmux("send-keys", "-t", "sp", "-l", text)
        self.tmux("send-keys", "-t", "sp", "Enter")

    def wait_for(self, pattern, timeout=20):
        rx = re.compile(pattern, re.M)
        return wait_until(lambda: rx.search(self.text()), timeout, interval=0.1,
                          what=f"{pattern!r} in the terminal:\n{self.text()}")

    def alive(self):
        return self.tmux("has-session", "-t", "sp", check=False).returncode == 0

    def kill(self):
        self.tmux("kill-server", check=False)


@pytest.fixture
def terminal(ssh_gateway, tmp_path):
    panes = []

    def start(key):
        opts, dest = ssh_gateway.ssh_base(key)
        pane = Pane(tmp_path / "tmux.sock", ["ssh", "-tt", *opts, dest])
        panes.append(pane)
        return pane
    yield start
    for p in panes:
        p.kill()


def _identity(gw, new_name, role, tmp_path):
    name = new_name(role)
    gw.add_identity(name)
    gw.grant(name, role)
    return name, gw.ssh_cert(name, tmp_path / "keys")


def _login(pane):
    """Until the remote shell answers: its prompt is whatever the target's bash prints."""
    n = random.randrange(10**6)
    pane.type(f"echo ready-{n}")
    pane.wait_for(rf"^ready-{n}$", timeout=30)


def _logout(pane, gw, name):
    pane.type("exit")
    wait_until(lambda: not pane.alive(), 20, what="ssh to exit after `exit`")
    return gw.session_of(name, ended=True, timeout=20)


def _asciicast(gw, session_id):
    """The export, parsed and checked line by line as asciicast v2."""
    out = gw.cli("export", session_id, "--format", "asciicast").stdout
    lines = out.splitlines()
    header = json.loads(lines[0])
    assert header["version"] == 2
    assert isinstance(header["width"], int) and isinstance(header["height"], int)
    events = [json.loads(line) for line in lines[1:]]
    last = 0.0
    for ev in events:
        assert isinstance(ev, list) and len(ev) == 3, ev
        t, code, data = ev
        assert isinstance(t, (int, float)) and t >= last, ev
        assert code in ("o", "i", "r") and isinstance(data, str), ev
        last = t
    return header, events


def _joined(events, code):
    return "".join(data for _, c, data in events if c == code)


def test_typed_input_resize_and_output_are_recorded(ssh_gateway, new_name, tmp_path, terminal):
    name, key = _identity(ssh_gateway, new_name, "ops", tmp_path)  # ops: record_input = yes
    marker = f"typed-{random.randrange(10**6)}-marker"
    pane = terminal(key)
    _login(pane)
    pane.type("stty size")
    pane.wait_for(r"^24 80$")
    pane.type(f"echo {marker} | tr a-z A-Z")
    pane.wait_for(rf"^{marker.upper()}$")
    pane.tmux("resize-window", "-t", "sp", "-x", "120", "-y", "40")
    # The window-change request travels asynchronously: ask until the shell sees the new size.
    deadline = time.monotonic() + 20
    while not re.search(r"^40 120$", pane.text(), re.M):
        assert time.monotonic() < deadline, f"the resize did not reach the target:\n{pane.text()}"
        pane.type("stty size")
        time.sleep(0.5)
    sess = _logout(pane, ssh_gateway, name)

    r = ssh_gateway.cli("replay", sess["id"], "--no-wait")
    events = r.stderr
    assert re.search(rf"ch0 input\] echo {marker} \| tr a-z A-Z", events), events
    assert re.search(r"ch0 resize\] 120x40", events), events
    assert re.search(r"ch0 pty\] \S+ 80x24", events), events
    assert marker.upper() in r.stdout
    assert "40 120" in r.stdout

    header, cast = _asciicast(ssh_gateway, sess["id"])
    assert (header["width"], header["height"]) == (80, 24)
    typed = _joined(cast, "i")
    assert f"echo {marker} | tr a-z A-Z\r" in typed
    assert "stty size\r" in typed
    resizes = [d for _, c, d in cast if c == "r"]
    assert resizes and resizes[-1] == "120x40", resizes
    output = _joined(cast, "o")
    assert marker.upper() in output and "24 80" in output and "40 120" in output
    # The resize comes after the output printed at the old size, before the new size's.
    r_at = next(t for t, c, d in cast if c == "r" and d == "120x40")
    out_at = [t for t, c, d in cast if c == "o" and "40 120" in d]
    assert out_at and out_at[0] >= r_at


def test_input_not_recorded_under_record_input_no(ssh_gateway, new_name, tmp_path, terminal):
    name, key = _identity(ssh_gateway, new_name, "sshquiet", tmp_path)
    secret = f"s3cret-{random.randrange(10**9)}-pw"
    pane = terminal(key)
    _login(pane)
    # A silent prompt: the terminal does not echo the secret, so nothing the target sends back
    # carries it; only the client's input does, and that must not be recorded.
    pane.type("read -r -s -p 'secret: ' S; echo; echo got-${#S}")
    pane.wait_for(r"secret: ")
    pane.type(secret)
    pane.wait_for(rf"^got-{len(secret)}$")
    sess = _logout(pane, ssh_gateway, name)

    r = ssh_gateway.cli("replay", sess["id"], "--no-wait")
    assert f"got-{len(secret)}" in r.stdout
    assert secret not in r.stdout + r.stderr
    assert " input]" not in r.stderr
    _, cast = _asciicast(ssh_gateway, sess["id"])
    assert not [ev for ev in cast if ev[1] == "i"]
    assert secret not in json.dumps(cast)
    raw = ssh_gateway.cli("export", sess["id"], "--format", "json").stdout
    assert secret not in raw
    assert f"got-{len(secret)}" in raw
