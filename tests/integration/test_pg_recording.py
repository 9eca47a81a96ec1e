"""Sessions are recorded: the replay timeline, the sessions index, and crash survival."""

import os
import time

import psycopg
import pytest

STATEMENTS = [
    # (statement, what its timeline line must say)
    ("SELECT count(*) FROM patients", "rows=1"),
    ("SELECT id FROM patients ORDER BY id LIMIT 3", "rows=3"),
    ("SELECT 1 / 0", "22012"),
    ("SELECT mrn FROM encounters JOIN patients ON patients.id = encounters.patient_id "
     "WHERE encounters.id <= 5 ORDER BY encounters.id", "rows=5"),
]


def run_statements(conn):
    for sql, _ in STATEMENTS:
        try:
            conn.execute(sql).fetchall()
        except psycopg.errors.DivisionByZero:
            pass


def assert_timeline(text, statements):
    """Each statement appears on its own line, in order, with its outcome."""
    lines = text.splitlines()
    pos = 0
    for sql, outcome in statements:
        for i in range(pos, len(lines)):
            if sql in lines[i]:
                assert outcome in lines[i], f"{sql!r} recorded as {lines[i]!r}, expected {outcome}"
                pos = i + 1
                break
        else:
            raise AssertionError(f"{sql!r} not found (in order) in the replay:\n{text}")


def test_replay_and_sessions_index(gateway, new_name):
    name = new_name()
    token = gateway.identity_with_token(name, "reader")
    with gateway.connect(name, token) as conn:
        run_statements(conn)
    session = gateway.session_of(name, ended=True)
    for key in ("id", "identity", "target", "database", "started_at", "ended_at", "end_reason",
                "recording_path", "chunk_count"):
        assert key in session, (key, session)
    assert session["target"] == "clinic" and session["database"] == "clinic", session
    assert session["end_reason"], session
    assert session["chunk_count"] >= 1, session
    assert os.path.exists(session["recording_path"]), session

    timeline = gateway.replay(session["id"])
    assert_timeline(timeline, STATEMENTS)
    assert any(line.startswith("end:") for line in timeline.splitlines()), timeline
    assert session["id"] not in [s["id"] for s in gateway.sessions(live=True)]


@pytest.mark.timeout(90)
def test_recording_survives_sigkill(gateway, new_name):
    name = new_name()
    token = gateway.identity_with_token(name, "reader")
    conn = gateway.connect(name, token)
    try:
        run_statements(conn)
        session = gateway.session_of(name, ended=False)
        time.sleep(1.5)  # longer than flush_interval: the chunks are written
        gateway.kill9()
    finally:
        try:
            conn.close()
        except psycopg.Error:
            pass
    gateway.start()
    timeline = gateway.replay(session["id"])
    assert_timeline(timeline, STATEMENTS)
