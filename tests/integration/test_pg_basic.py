"""Ordinary client traffic through the gateway gives the same results as a direct connection."""

import os
import re
import subprocess
import time

import psycopg
import pytest

import pgwire
from conftest import SESSION_NOTICE, run

COMPARED_QUERIES = [
    "SELECT count(*) FROM patients",
    "SELECT id, mrn, given_name, family_name, birth_date, sex FROM patients ORDER BY id LIMIT 10",
    "SELECT kind, count(*), min(started_at) FROM encounters GROUP BY kind ORDER BY kind",
]


@pytest.mark.parametrize("sql", COMPARED_QUERIES)
def test_psql_output_matches_direct(gateway, pg, new_name, sql):
    name = new_name()
    token = gateway.identity_with_token(name, "reader")
    through = gateway.psql(name, token, "-At", "-c", sql).stdout
    direct = pg.psql(sql)
    assert through == direct
    assert through.strip()


def test_login_notice_says_session_is_recorded(gateway, new_name):
    name = new_name()
    token = gateway.identity_with_token(name, "reader")
    out = pgwire.attempt(gateway.port, {"user": name, "database": "clinic"}, token,
                         cafile=str(gateway.ca), query="SELECT 1")
    assert out.error is None, out.error
    assert out.rows == [["1"]]
    assert any(SESSION_NOTICE in n.get("M", "") for n in out.notices), out.notices
    shown = gateway.psql(name, token, "-At", "-c", "SELECT 1")
    assert SESSION_NOTICE in shown.stderr


def test_psycopg_prepared_unnamed_and_executemany(gateway, pg, new_name):
    name = new_name()
    token = gateway.identity_with_token(name, "writer")
    expected = pg.scalar("SELECT mrn FROM patients WHERE id = 42")
    with gateway.connect(name, token) as conn:
        # Named server-side prepared statement, executed repeatedly.
        for pid in (42, 43, 42):
            row = conn.execute("SELECT mrn FROM patients WHERE id = %s", (pid,),
                               prepare=True).fetchone()
            assert row[0] == pg.scalar(f"SELECT mrn FROM patients WHERE id = {pid}")
        # Unnamed statement (extended protocol, parameters bound).
        row = conn.execute("SELECT mrn, birth_date FROM patients WHERE id = %s", (42,),
                           prepare=False).fetchone()
        assert row[0] == expected
        # executemany inside a transaction that is rolled back, so the data stays canonical.
        conn.autocommit = False
        with conn.cursor() as cur:
            rows = [(900000 + i, f"MRNX{i:06d}", "Test", "Person", "2000-01-01", "X", "00000",
                     "555-0000000") for i in range(50)]
            cur.executemany("INSERT INTO patients VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", rows)
            cur.execute("SELECT count(*) FROM patients WHERE id >= 900000")
            assert cur.fetchone()[0] == 50
        conn.rollback()
        conn.autocommit = True
        assert conn.execute("SELECT count(*) FROM patients WHERE id >= 900000").fetchone()[0] == 0


def test_error_mid_transaction_then_rollback_and_continue(gateway, new_name):
    name = new_name()
    token = gateway.identity_with_token(name, "reader")
    with gateway.connect(name, token, autocommit=False) as conn:
        assert conn.execute("SELECT count(*) FROM patients").fetchone()[0] == 2000
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / 0")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM encounters").fetchone()[0] == 6000
        conn.commit()


@pytest.mark.timeout(90)
def test_pgbench_select_only_without_failures(gateway, bench_db, new_name):
    name = new_name()
    token = gateway.identity_with_token(name, "reader")
    proc = run(["pgbench", "-n", "-S", "-T", "5", "-c", "4", "-j", "2",
                "-h", "127.0.0.1", "-p", gateway.port, "-U", name, f"clinic/{bench_db}"],
               timeout=60, env={"PGPASSWORD": token, "PGSSLMODE": "require",
                                "PGCONNECT_TIMEOUT": "10"})
    processed = re.search(r"number of transactions actually processed: (\d+)", proc.stdout)
    assert processed and int(processed.group(1)) > 0, proc.stdout
    failed = re.search(r"number of failed transactions: (\d+)", proc.stdout)
    assert failed and int(failed.group(1)) == 0, proc.stdout


def test_listen_notify_between_two_gateway_sessions(gateway, new_name):
    name = new_name()
    token = gateway.identity_with_token(name, "reader")
    received = []
    with gateway.connect(name, token) as listener, gateway.connect(name, token) as sender:
        listener.add_notify_handler(received.append)
        listener.execute("LISTEN sp_test_channel")
        sender.execute("NOTIFY sp_test_channel, 'hello through sallyport'")
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            listener.execute("SELECT 1")  # notifications are delivered with any reply
            time.sleep(0.1)
    assert [(n.channel, n.payload) for n in received] == [("sp_test_channel",
                                                           "hello through sallyport")]


@pytest.mark.timeout(240)
def test_large_row_256_mib(gateway, new_name, tmp_path):
    name = new_name()
    token = gateway.identity_with_token(name, "reader")
    out = tmp_path / "large.out"
    with open(out, "wb") as f:
        conninfo = gateway.dsn(name, "").replace(" password=''", "")
        proc = subprocess.run(["psql", "-X", "-At", "-d", conninfo, "-c",
                               "SELECT repeat('x', 256*1024*1024)"],
                              stdout=f, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                              timeout=200, env={**os.environ, "PGPASSWORD": token})
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert out.stat().st_size == 256 * 1024 * 1024 + 1  # the value and psql's newline
    out.unlink()


def test_channel_binding_required(gateway, new_name):
    name = new_name()
    token = gateway.identity_with_token(name, "reader")
    with gateway.connect(name, token, channel_binding="require") as conn:
        assert conn.execute("SELECT count(*) FROM patients").fetchone()[0] == 2000
