"""Issue 5, SSH faults: the target's sshd dies mid-transfer. The client is told and ends
promptly instead of hanging, the recording is sealed with the end reason target-closed, and the
gateway goes on serving new SSH sessions."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import wait_until
from sshenv import TARGET_LOGIN


def children_of(pid):
    """Every descendant of pid (from /proc), with its command line."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError, ValueError):
            continue
        parents[int(entry)] = (ppid, cmd)
    found, frontier = {}, {pid}
    while frontier:
        nxt = {p for p, (pp, _) in parents.items() if pp in frontier and p not in found}
        for p in nxt:
            found[p] = parents[p][1]
        frontier = nxt
    return found


def session_sshds(sshd_pid, login):
    """The per-connection sshd processes of `login` ("sshd: LOGIN [priv]", "sshd: LOGIN@notty")."""
    return [p for p, cmd in children_of(sshd_pid).items() if cmd.startswith(f"sshd: {login}")]


@pytest.fixture
def ops_key(ssh_gateway, new_name, tmp_path):
    name = new_name("kil")
    ssh_gateway.add_identity(name)
    ssh_gateway.grant(name, "ops")
    return name, ssh_gateway.ssh_cert(name, tmp_path / "keys")


@pytest.mark.timeout(120)
def test_sshd_killed_mid_transfer(ssh_gateway, ops_key):
    gw = ssh_gateway
    name, key = ops_key
    opts, dest = gw.ssh_base(key)
    client = subprocess.Popen(["ssh", *opts, dest, "head -c 4294967296 /dev/zero"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        got = 0
        while got < 64 * 1024 * 1024:
            block = client.stdout.read(1 << 20)
            assert block, f"the transfer stopped early: {client.stderr.read().decode()}"
            got += len(block)
        session = gw.session_of(name, ended=False)
        victims = session_sshds(gw.sshd.proc.pid, TARGET_LOGIN)
        assert victims, children_of(gw.sshd.proc.pid)
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        # Drain what is in flight; the client must then end on its own, promptly.
        while client.stdout.read(1 << 20):
            pass
        client.wait(timeout=10)
        ended_in = time.monotonic() - killed
        err = client.stderr.read().decode(errors="replace")
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode != 0, err
    assert ended_in < 5, f"the client ended {ended_in:.1f}s after the kill"
    print(f"{got >> 20} MiB through, sshd killed; client exit {client.returncode} after "
          f"{ended_in:.2f}s: {err.strip()!r}")

    row = gw.session_of(name, ended=True, timeout=15)
    assert row["id"] == session["id"] and row["end_reason"] == "target-closed", row
    verify = json.loads(gw.cli("verify", "--json", session["id"]).stdout)
    assert verify[0]["status"] == "sealed-ok", verify
    assert verify[0]["end_reason"] == "target-closed", verify  # from the sealed trailer

    # The gateway keeps serving SSH.
    ok = gw.ssh(key, "echo after-the-kill")
    assert ok.returncode == 0 and ok.stdout == "after-the-kill\n", ok
    assert gw.running
