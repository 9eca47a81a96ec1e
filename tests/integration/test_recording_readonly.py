"""Issue 5, the recording directory read-only (a read-only mount: the tests run as root, and
root ignores mode bits). Under recording = strict a new session is refused with 58030; under
best_effort the session goes on with the gap in the audit trail. The gateway keeps serving,
and recordings already written elsewhere stay intact."""

import json
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

import pgwire
from conftest import run, wait_until


def audit_events(gw, code, name):
    out = []
    for path in sorted((Path(gw.dir) / "audit").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                ev = json.loads(line)
                if (ev.get("metadata", {}).get("event_code") == code
                        and ev.get("user", {}).get("name") == name):
                    out.append(ev)
    return out


def verify_one(gw, session_id):
    rows = json.loads(gw.cli("verify", "--json", session_id, check=False).stdout)
    assert len(rows) == 1, rows
    return rows[0]


@pytest.fixture
def ro_dir(tmp_path):
    """A tmpfs that is writable at first (remount(ro) makes it read-only)."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mnt)])

    def remount(mode):
        run(["mount", "-o", f"remount,{mode}", str(mnt)])
    yield mnt, remount
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def use_recordings_dir(gw, path):
    if path is None:
        gw.main_extra.pop("recordings_dir", None)
    else:
        gw.main_extra["recordings_dir"] = str(path)
    gw.write_config()
    gw.reload()
    time.sleep(0.5)


@pytest.mark.timeout(120)
def test_pg_read_only_recordings_dir(gateway, new_name, ro_dir):
    gw = gateway
    mnt, remount = ro_dir
    strict, lax, before = new_name(), new_name(), new_name()
    strict_token = gw.identity_with_token(strict, "reader")
    lax_token = gw.identity_with_token(lax, "contractor")
    before_token = gw.identity_with_token(before, "reader")
    with gw.connect(before, before_token) as conn:
        conn.execute("select count(*) from patients").fetchall()
    earlier = gw.session_of(before, ended=True)
    assert verify_one(gw, earlier["id"])["status"] == "sealed-ok"
    earlier_bytes = Path(earlier["recording_path"]).read_bytes()

    remount("ro")  # (a mount with a file open for writing cannot be made read-only)
    use_recordings_dir(gw, mnt)
    try:
        # A new strict session is refused, in PostgreSQL's form, at once.
        t0 = time.monotonic()
        out = pgwire.attempt(gw.port, {"user": strict, "database": "clinic"}, strict_token)
        took = time.monotonic() - t0
        assert out.code == "58030", out
        assert "its recording cannot be written" in out.message, out
        print(f"strict: new session refused with 58030 in {took:.2f}s")

        # best_effort goes on, and the gap is audited.
        with gw.connect(lax, lax_token) as conn:
            assert conn.execute("select count(*) from patients").fetchone()[0] > 0
        gaps = wait_until(lambda: audit_events(gw, "recording-gap", lax), 10,
                          what="the recording-gap audit event")
        assert "Read-only file system" in gaps[-1].get("status_detail", ""), gaps[-1]
        row = gw.session_of(lax, ended=True)
        assert row["end_reason"] == "client-closed", row
    finally:
        remount("rw")
        use_recordings_dir(gw, None)

    # Nothing already recorded was touched, and recording works again.
    assert Path(earlier["recording_path"]).read_bytes() == earlier_bytes
    assert verify_one(gw, earlier["id"])["status"] == "sealed-ok"
    with gw.connect(strict, strict_token) as conn:
        conn.execute("select 1").fetchall()
    again = gw.session_of(strict, ended=True)
    assert verify_one(gw, again["id"])["status"] == "sealed-ok"
    assert gw.running


@pytest.fixture
def ssh_users(ssh_gateway, new_name, tmp_path):
    gw = ssh_gateway
    gw.roles["sshlax"] = {"targets": "host1", "logins": "sp-ops", "max_ttl": "1h",
                          "recording": "best_effort"}
    gw.write_config()
    gw.reload()
    made = {}
    for role in ("ops", "sshlax"):
        name = new_name("ro")
        gw.add_identity(name)
        gw.grant(name, role)
        made[role] = (name, gw.ssh_cert(name, tmp_path / name))
    yield made
    del gw.roles["sshlax"]
    gw.write_config()
    gw.reload()
    time.sleep(0.5)


@pytest.mark.timeout(120)
def test_ssh_read_only_recordings_dir(ssh_gateway, ssh_users, ro_dir):
    gw = ssh_gateway
    mnt, remount = ro_dir
    remount("ro")
    use_recordings_dir(gw, mnt)
    try:
        name, key = ssh_users["ops"]
        opts, dest = gw.ssh_base(key)
        opts = ["LogLevel=INFO" if o == "LogLevel=ERROR" else o for o in opts]  # banners
        r = run(["ssh", *opts, dest, "echo should-not-run"], check=False)
        assert r.returncode == 255, r
        assert "should-not-run" not in r.stdout
        assert "session refused: its recording cannot be written" in r.stderr, r.stderr

        lax, lax_key = ssh_users["sshlax"]
        ok = gw.ssh(lax_key, "echo best-effort-runs")
        assert ok.returncode == 0 and ok.stdout == "best-effort-runs\n", ok
        gaps = wait_until(lambda: audit_events(gw, "recording-gap", lax), 10,
                          what="the recording-gap audit event")
        assert gaps
    finally:
        remount("rw")
        use_recordings_dir(gw, None)
    ok = gw.ssh(key, "echo recorded-again")
    assert ok.returncode == 0 and ok.stdout == "recorded-again\n", ok
    assert gw.running
