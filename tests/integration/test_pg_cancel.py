"""A cancel request sent to the gateway reaches the upstream backend promptly."""

import os
import signal
import subprocess
import threading
import time

import psycopg
import pytest


def test_psycopg_cancel_ends_query_with_57014(gateway, new_name):
    name = new_name()
    token = gateway.identity_with_token(name, "reader")
    with gateway.connect(name, token) as conn:
        sent = {}

        def cancel_later():
            time.sleep(1)
            sent["at"] = time.monotonic()
            conn.cancel()

        canceller = threading.Thread(target=cancel_later)
        canceller.start()
        with pytest.raises(psycopg.errors.QueryCanceled) as exc:
            conn.execute("SELECT pg_sleep(60)")
        ended = time.monotonic()
        canceller.join(timeout=5)
        assert exc.value.sqlstate == "57014"
        assert ended - sent["at"] < 1.0, ended - sent["at"]  # the issue: within a second
        # The session survives a cancelled statement.
        assert conn.execute("SELECT 1").fetchone()[0] == 1


def test_psql_sigint_cancels(gateway, new_name):
    name = new_name()
    token = gateway.identity_with_token(name, "reader")
    conninfo = gateway.dsn(name, "").replace(" password=''", "")
    proc = subprocess.Popen(["psql", "-X", "-d", conninfo, "-c", "SELECT pg_sleep(60)"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PGPASSWORD": token})
    try:
        time.sleep(2)  # connected and waiting on the sleep
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        assert time.monotonic() - sent < 2.0
        assert "canceling statement due to user request" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
