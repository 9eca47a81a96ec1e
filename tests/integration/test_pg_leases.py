"""Ephemeral upstream roles: created per grant, fenced by pg_hba, dropped when access ends."""

import re
import threading
import time

import psycopg
import pytest

from conftest import run, wait_until


def role_exists(pg, role):
    return pg.scalar(f"SELECT count(*) FROM pg_roles WHERE rolname = '{role}'") == 1


def session_role(conn, identity):
    role = conn.execute("SELECT current_user").fetchone()[0]
    assert re.fullmatch(rf"sp_{re.escape(identity)}_[0-9a-f]+", role), role
    return role


def test_ephemeral_role_while_session_lives_and_after_revoke(gateway, pg, new_name):
    name = new_name()
    token = gateway.identity_with_token(name, "reader")
    conn = gateway.connect(name, token)
    try:
        role = session_role(conn, name)
        session = gateway.session_of(name, ended=False)
        with pg.connect() as su:
            attrs = su.execute(
                "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, "
                "pg_has_role(oid, 'sallyport_managed', 'MEMBER'), "
                "pg_has_role(oid, 'phi_read', 'MEMBER'), pg_has_role(oid, 'phi_write', 'MEMBER') "
                "FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            assert attrs == (True, False, False, False, True, True, False), attrs
            apps = [r[0] for r in su.execute(
                "SELECT application_name FROM pg_stat_activity WHERE usename = %s", (role,))]
        assert any(name in a and session["id"] in a for a in apps), apps

        # Walking around the gateway: the role may not log in directly without TLS.
        direct = run(["psql", "-X", "-d", f"host=127.0.0.1 port={pg.port} user={role} "
                      "dbname=clinic sslmode=disable connect_timeout=10", "-c", "SELECT 1"],
                     check=False, env={"PGPASSWORD": "guess"})
        assert direct.returncode != 0
        assert "pg_hba.conf rejects connection" in direct.stderr, direct.stderr

        gateway.cli("revoke", name, "reader", "--reason", "integration test revoke")
        wait_until(lambda: not role_exists(pg, role), 5, what=f"role {role} to be dropped")
        with pytest.raises(psycopg.Error):
            conn.execute("SELECT 1")
    finally:
        conn.close()


@pytest.mark.timeout(60)
def test_idle_lease_is_dropped(gateway, pg, new_name):
    name = new_name()
    token = gateway.identity_with_token(name, "reader")
    with gateway.connect(name, token) as conn:
        role = session_role(conn, name)
    assert role_exists(pg, role)
    # lease_idle = 3s in the test configuration; the sweep runs every few seconds.
    wait_until(lambda: not role_exists(pg, role), 12, interval=0.25,
               what=f"idle lease {role} to be dropped")


def test_kill_ends_live_session_with_reason(gateway, new_name):
    name = new_name()
    token = gateway.identity_with_token(name, "reader")
    reason = "integration-kill-reason-7f3a"
    with gateway.connect(name, token) as conn:
        session = gateway.session_of(name, ended=False)
        killed = {}

        def kill_soon():
            time.sleep(0.5)
            gateway.cli("kill", session["id"], "--reason", reason)
            killed["at"] = time.monotonic()

        killer = threading.Thread(target=kill_soon)
        killer.start()
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("SELECT pg_sleep(30)")
        ended = time.monotonic()
        killer.join(timeout=30)
    assert "at" in killed, "sallyport kill did not complete"
    # One second, plus scheduling slack for a loaded CI machine.
    assert ended - killed["at"] < 1.5, ended - killed["at"]
    assert reason in str(exc.value), str(exc.value)
    ended_row = gateway.session_of(name, ended=True)
    assert reason in ended_row["end_reason"], ended_row

    # The statement stops upstream too, not only the client's connection.
    def statement_stopped():
        with gateway.pg.connect() as c:
            return not c.execute(
                "select 1 from pg_stat_activity where usename like %s and state = 'active'",
                (f"sp_{name}_%",)).fetchall()
    wait_until(statement_stopped, 2, interval=0.1, what="the killed statement to stop upstream")


def test_idle_timeout_logs_the_session_off(gateway, new_name):
    name = new_name()
    token = gateway.identity_with_token(name, "dozer")
    conn = gateway.connect(name, token)
    try:
        for _ in range(3):  # activity keeps it alive past the timeout
            assert conn.execute("SELECT 1").fetchone()[0] == 1
            time.sleep(1)
        time.sleep(3.5)
        with pytest.raises(psycopg.OperationalError) as err:
            conn.execute("SELECT 1")
        assert "idle" in str(err.value)
    finally:
        conn.close()
    row = gateway.session_of(name, ended=True)
    assert row["end_reason"] == "idle", row
