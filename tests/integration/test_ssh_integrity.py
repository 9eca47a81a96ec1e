"""Issue 4 for SSH sessions through the real gateway: the sessions index follows a live
recording, a SIGKILL leaves it unsealed-intact and the next start seals it gateway-crashed,
and strict recording ends a session that cannot be recorded while best_effort goes on with
the gap in the audit trail."""

import json
import subprocess
import time
from pathlib import Path

import pytest

from conftest import wait_until
from sshenv import TARGET_LOGIN

# `|| exit`: when the session goes (the gateway killed), the loop ends with it instead of
# spinning on a broken pipe on the target after the test.
BUSY = "while true; do head -c 65536 /dev/urandom | base64 || exit 1; sleep 0.05; done"


def verify(gateway, session_id):
    proc = gateway.cli("verify", "--json", session_id, check=False)
    rows = json.loads(proc.stdout or "[]")
    assert len(rows) == 1, proc.stdout + proc.stderr
    return rows[0]


def audit_lines(gateway):
    out = []
    for path in sorted((Path(gateway.dir) / "audit").glob("*.jsonl")):
        out += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return out


def start_busy(gateway, key):
    opts, dest = gateway.ssh_base(key)
    return subprocess.Popen(["ssh", *opts, dest, BUSY], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)


def stop_client(proc):
    if proc.poll() is None:
        proc.kill()
    return proc.communicate(timeout=10)


@pytest.fixture
def ssh_user(ssh_gateway, new_name, tmp_path):
    def make(role):
        name = new_name("sshint")
        ssh_gateway.add_identity(name)
        ssh_gateway.grant(name, role)
        return name, ssh_gateway.ssh_cert(name, tmp_path / name)
    return make


@pytest.mark.timeout(90)
def test_busy_ssh_sigkill_then_sealed_gateway_crashed(ssh_gateway, ssh_user):
    name, key = ssh_user("ops")
    client = start_busy(ssh_gateway, key)
    try:
        session = ssh_gateway.session_of(name, ended=False)
        # The sessions index follows the recording while it lives (at least every 10 s).
        first = wait_until(lambda: next((s["chunk_count"] for s in ssh_gateway.sessions()
                                         if s["id"] == session["id"] and s["chunk_count"] > 0),
                                        None), 5, what="a first chunk count in the index")
        wait_until(lambda: any(s["id"] == session["id"] and s["chunk_count"] > first
                               for s in ssh_gateway.sessions()),
                   13, what="a later chunk count in the index")
        time.sleep(2.5)
        assert client.poll() is None, stop_client(client)
        ssh_gateway.kill9()
    finally:
        stop_client(client)
    row = verify(ssh_gateway, session["id"])
    assert row["status"] == "unsealed-intact", row
    ssh_gateway.start()  # seals what the crash left open
    row = verify(ssh_gateway, session["id"])
    assert row["status"] == "sealed-ok", row
    assert row["end_reason"] == "gateway-crashed", row


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mnt)],
                   check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def best_effort_role(ssh_gateway):
    ssh_gateway.roles["sshbest"] = {"targets": "host1", "logins": TARGET_LOGIN, "max_ttl": "1h",
                                    "recording": "best_effort"}
    ssh_gateway.write_config()
    ssh_gateway.reload()
    time.sleep(0.5)
    yield "sshbest"
    del ssh_gateway.roles["sshbest"]
    ssh_gateway.write_config()
    ssh_gateway.reload()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("strict", [True, False], ids=["strict", "best_effort"])
def test_ssh_recording_disk_fills_up(ssh_gateway, ssh_user, small_fs, best_effort_role, strict):
    name, key = ssh_user("ops" if strict else best_effort_role)
    ssh_gateway.main_extra["recordings_dir"] = str(small_fs)
    ssh_gateway.write_config()
    ssh_gateway.reload()
    time.sleep(0.5)
    filler = small_fs / "filler"
    client = None
    try:
        client = start_busy(ssh_gateway, key)
        ssh_gateway.session_of(name, ended=False)
        # Random text in base64 compresses badly: the few KiB left go within a flush or two.
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1k", "count=1900"],
                       capture_output=True)
        if strict:
            wait_until(lambda: client.poll() is not None, 15, what="the strict session ended")
            _, err = client.communicate(timeout=10)
            assert client.returncode != 0, err
            assert "session recording cannot be written" in err, err
        else:
            time.sleep(6)
            assert client.poll() is None, stop_client(client)
            gaps = [e for e in audit_lines(ssh_gateway)
                    if e.get("metadata", {}).get("event_code") == "recording-gap"
                    and e.get("user", {}).get("name") == name]
            assert len(gaps) == 1, gaps
    finally:
        if client:
            stop_client(client)
        filler.unlink(missing_ok=True)
        del ssh_gateway.main_extra["recordings_dir"]
        ssh_gateway.write_config()
        ssh_gateway.reload()
        time.sleep(0.5)
    assert ssh_gateway.running
