"""Issue 5, the store unavailable: another process holds the SQLite store's write lock
(`BEGIN EXCLUSIVE`, as a stuck CLI or a backup tool would). New sessions are refused at once
with 57P03 (PostgreSQL) or a refusal line (SSH); live sessions go on for store_outage_grace and
then end with the reason store-unavailable; an outage shorter than the grace ends nothing.
Every step is in the audit trail, and the sessions index catches up when the store is back."""

import json
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

import pgwire
from conftest import wait_until

GRACE_S = 4

HOLD_LOCK = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
db.execute("ROLLBACK")
"""


class StoreLock:
    """A separate process holding the store's write lock until release()."""

    def __init__(self, store_path):
        self.proc = subprocess.Popen(["/usr/bin/python3", "-c", HOLD_LOCK, str(store_path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        assert line == "locked", f"the lock holder said {line!r}"
        self.taken = time.monotonic()

    def release(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)


def audit_events(gw, code):
    out = []
    for path in sorted((Path(gw.dir) / "audit").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                ev = json.loads(line)
                if ev.get("metadata", {}).get("event_code") == code:
                    out.append(ev)
    return out


@pytest.fixture
def short_grace(gateway):
    gateway.main_extra["store_outage_grace"] = f"{GRACE_S}s"
    gateway.write_config()
    gateway.reload()
    yield gateway
    del gateway.main_extra["store_outage_grace"]
    gateway.write_config()
    gateway.reload()


def store_path(gw):
    return Path(gw.dir) / "state" / "sallyport.db"


def outage_noticed(gw, before):
    return wait_until(lambda: len(audit_events(gw, "store-outage")) > before, 10,
                      what="the store-outage audit event")


def query_ok(conn):
    return conn.execute("select 1").fetchone() == (1,)


@pytest.mark.timeout(120)
def test_store_locked_past_grace_refuses_new_and_ends_live_sessions(short_grace, new_name):
    gw = short_grace
    name, late = new_name(), new_name()
    token = gw.identity_with_token(name)
    late_token = gw.identity_with_token(late)
    conn = gw.connect(name, token)
    assert query_ok(conn)
    session = gw.session_of(name, ended=False)
    outages = len(audit_events(gw, "store-outage"))

    lock = StoreLock(store_path(gw))
    try:
        outage_noticed(gw, outages)
        noticed = time.monotonic() - lock.taken

        # A new session is refused at once, in PostgreSQL's own form.
        started = time.monotonic()
        refused = pgwire.attempt(gw.port, {"user": late, "database": "clinic"}, late_token)
        refused_in = time.monotonic() - started
        assert refused.code == "57P03", refused
        assert refused.message == "sallyport's store is unavailable; try again later", refused
        assert refused.error.get("S") == "FATAL", refused
        assert refused_in < 2, f"the refusal took {refused_in:.1f}s"
        with pytest.raises(psycopg.OperationalError, match="store is unavailable"):
            gw.connect(late, late_token)  # libpq shows it too

        # The live session goes on while the outage is shorter than the grace...
        assert time.monotonic() - lock.taken < GRACE_S - 0.5
        assert query_ok(conn)

        # ...and ends once it is longer, with the reason.
        ended = None
        while ended is None and time.monotonic() - lock.taken < GRACE_S + 10:
            try:
                query_ok(conn)
                time.sleep(0.1)
            except psycopg.Error as e:
                ended = e
        lived = time.monotonic() - lock.taken
    finally:
        lock.release()
    assert ended is not None, "the live session outlived the grace by 10s"
    assert GRACE_S - 0.5 <= lived <= GRACE_S + 3, f"ended {lived:.1f}s after the lock"
    assert "store_outage_grace" in str(ended), ended
    if ended.sqlstate:  # the FATAL arrived before the socket closed
        assert ended.sqlstate == "57P01", ended
    print(f"outage noticed after {noticed:.1f}s, new session refused in {refused_in:.2f}s, "
          f"live session ended {lived:.1f}s after the lock (grace {GRACE_S}s)")

    # The store is back: the index shows the end (kept during the outage), the recording is
    # sealed with the reason, and new sessions are served again.
    row = gw.session_of(name, ended=True, timeout=15)
    assert row["id"] == session["id"] and row["end_reason"] == "store-unavailable", row
    timeline = gw.replay(session["id"])
    assert "end: store-unavailable" in timeline, timeline
    assert "recording: sealed" in timeline, timeline
    verify = json.loads(gw.cli("verify", "--json", session["id"]).stdout)
    assert verify[0]["status"] == "sealed-ok", verify
    # The gateway sees the store back at its next check (every 500 ms), then serves again.
    over = wait_until(lambda: audit_events(gw, "store-outage-end"), 10,
                      what="the store-outage-end audit event")
    with gw.connect(late, late_token) as again:
        assert query_ok(again)
    exceeded = audit_events(gw, "store-outage-grace-exceeded")
    assert exceeded and exceeded[-1]["status"] == "Failure", exceeded
    assert "ended" in over[-1]["status_detail"], over[-1]
    refusals = [e for e in audit_events(gw, "logon") + audit_events(gw, "authorize")
                if e.get("user", {}).get("name") == late and e.get("status") == "Failure"]
    assert refusals, "the refused session is not in the audit trail"
    assert late_token not in gw.log_text() and token not in gw.log_text()
    assert gw.running


@pytest.mark.timeout(120)
def test_store_back_within_grace_ends_nothing(short_grace, new_name):
    gw = short_grace
    name = new_name()
    token = gw.identity_with_token(name)
    conn = gw.connect(name, token)
    assert query_ok(conn)
    before = len(audit_events(gw, "store-outage"))
    ends_before = len(audit_events(gw, "store-outage-end"))
    lock = StoreLock(store_path(gw))
    try:
        outage_noticed(gw, before)
        held = time.monotonic() - lock.taken
        assert held < GRACE_S - 1, f"the outage was noticed only after {held:.1f}s"
    finally:
        lock.release()
    over = wait_until(lambda: audit_events(gw, "store-outage-end")[ends_before:], 10,
                      what="the store-outage-end audit event")
    assert over[-1]["status"] == "Success" and "no session was ended" in over[-1]["status_detail"]
    time.sleep(GRACE_S + 1)  # well past the grace counted from the lock
    assert query_ok(conn), "the session ended although the store came back within the grace"
    conn.close()
    row = gw.session_of(name, ended=True)
    assert row["end_reason"] == "client-closed", row


@pytest.fixture
def ssh_short_grace(ssh_gateway):
    ssh_gateway.main_extra["store_outage_grace"] = f"{GRACE_S}s"
    ssh_gateway.write_config()
    ssh_gateway.reload()
    yield ssh_gateway
    del ssh_gateway.main_extra["store_outage_grace"]
    ssh_gateway.write_config()
    ssh_gateway.reload()


@pytest.mark.timeout(120)
def test_ssh_store_locked_past_grace(ssh_short_grace, new_name, tmp_path):
    gw = ssh_short_grace
    keys = {}
    for who in ("live", "late"):
        name = new_name("sso")
        gw.add_identity(name)
        gw.grant(name, "ops")
        keys[who] = (name, gw.ssh_cert(name, tmp_path / who))
    name, key = keys["live"]
    opts, dest = gw.ssh_base(key)
    opts = ["LogLevel=INFO" if o == "LogLevel=ERROR" else o for o in opts]  # shows the reasons
    live = subprocess.Popen(["ssh", *opts, dest, "while true; do echo tick; sleep 0.2; done"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline() == "tick\n"
        session = gw.session_of(name, ended=False)
        outages = len(audit_events(gw, "store-outage"))
        ends_before = len(audit_events(gw, "store-outage-end"))
        lock = StoreLock(store_path(gw))
        try:
            outage_noticed(gw, outages)
            late, late_key = keys["late"]
            lopts, ldest = gw.ssh_base(late_key)
            lopts = ["LogLevel=INFO" if o == "LogLevel=ERROR" else o for o in lopts]
            t0 = time.monotonic()
            r = subprocess.run(["ssh", *lopts, ldest, "echo should-not-run"],
                               capture_output=True, text=True, timeout=30)
            refused_in = time.monotonic() - t0
            assert r.returncode == 255 and "should-not-run" not in r.stdout, r
            assert "the store is unavailable; try again later" in r.stderr, r.stderr
            assert live.poll() is None, "the live session ended before the grace"
            live.wait(timeout=GRACE_S + 10)
            lived = time.monotonic() - lock.taken
        finally:
            lock.release()
        err = live.stderr.read()
    finally:
        if live.poll() is None:
            live.kill()
            live.wait()
    assert live.returncode == 255, err
    assert "store-unavailable" in err and "store_outage_grace" in err, err
    assert GRACE_S - 0.5 <= lived <= GRACE_S + 3, f"ended {lived:.1f}s after the lock"
    print(f"ssh: new session refused in {refused_in:.2f}s, live session ended {lived:.1f}s "
          f"after the lock (grace {GRACE_S}s)")
    row = gw.session_of(name, ended=True, timeout=15)
    assert row["id"] == session["id"] and row["end_reason"] == "store-unavailable", row
    wait_until(lambda: len(audit_events(gw, "store-outage-end")) > ends_before, 10,
               what="the store-outage-end audit event")
    ok = gw.ssh(keys["late"][1], "echo served-again")
    assert ok.returncode == 0 and ok.stdout == "served-again\n", ok
