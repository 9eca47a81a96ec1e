"""Signals: SIGTERM drains and exits cleanly; SIGHUP applies a policy change to live sessions."""

import signal
import time

import psycopg
import pytest

import pgwire
from conftest import wait_until


@pytest.mark.timeout(90)
def test_sigterm_drains_and_seals(gateway, new_name):
    name = new_name()
    token = gateway.identity_with_token(name, "reader")
    conn = gateway.connect(name, token)
    try:
        assert conn.execute("SELECT count(*) FROM patients").fetchone()[0] == 2000
        session = gateway.session_of(name, ended=False)
        gateway.signal(signal.SIGTERM)
        status = gateway.wait_exit(timeout=5 + 15)  # drain_timeout = 5s
        assert status == 0, gateway.log_tail()
        with pytest.raises(psycopg.Error):
            conn.execute("SELECT 1")
    finally:
        conn.close()
    row = next(s for s in gateway.sessions() if s["id"] == session["id"])
    assert row["ended_at"] and row["end_reason"], row
    timeline = gateway.replay(session["id"])
    assert "SELECT count(*) FROM patients" in timeline
    assert any(line.startswith("end:") for line in timeline.splitlines()), timeline
    assert "unsealed" not in timeline.lower(), timeline
    gateway.start()


@pytest.mark.timeout(60)
def test_sighup_removing_role_ends_its_sessions(gateway, new_name):
    name = new_name()
    token = gateway.identity_with_token(name, "contractor")
    conn = gateway.connect(name, token)
    removed = gateway.roles.pop("contractor")
    try:
        assert conn.execute("SELECT 1").fetchone()[0] == 1
        gateway.write_config()
        gateway.reload()

        def session_ended():
            try:
                conn.execute("SELECT 1")
                return False
            except psycopg.Error:
                return True

        wait_until(session_ended, 5, interval=0.2, what="the contractor session to end")
        out = pgwire.attempt(gateway.port, {"user": name, "database": "clinic"}, token,
                             cafile=str(gateway.ca))
        assert out.code == "42501" and "no grant" in out.message, out.error
        assert gateway.running, "SIGHUP must not stop the gateway"
    finally:
        conn.close()
        gateway.roles["contractor"] = removed
        gateway.write_config()
        if gateway.running:
            gateway.reload()
            time.sleep(0.5)
