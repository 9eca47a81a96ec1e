"""What reaches the upstream, the recording and the audit trail — and what must not."""

import glob
import json
import os

import psycopg

from pgwire import attempt


def test_only_allowed_startup_parameters_reach_the_upstream(gateway, new_name):
    name = new_name()
    token = gateway.identity_with_token(name)
    out = attempt(gateway.port, {"user": name, "database": "clinic", "TimeZone": "Asia/Tokyo",
                                 "work_mem": "123MB", "application_name": "etl-job"},
                  token, query="select current_setting('TimeZone'), current_setting('work_mem'),"
                               " current_setting('application_name')")
    assert out.error is None, out
    tz, work_mem, app = out.rows[0]
    assert tz == "Asia/Tokyo"          # on the allow-list
    assert work_mem != "123MB"         # not on it: dropped
    assert app.startswith(f"{name}/")  # rewritten to name the identity and the session


def timeline_json(gateway, session_id):
    out = gateway.cli("replay", session_id, "--json").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_parameter_values_recorded_only_when_the_role_says_so(gateway, new_name):
    secret = "mrn-7731-should-stay-out"
    rows = {}
    for role in ("reader", "writer"):  # reader: record_params = yes; writer: default no
        name = new_name(role)
        token = gateway.identity_with_token(name, role)
        with gateway.connect(name, token) as conn:
            conn.execute("select %s::text", (secret,), prepare=True).fetchall()
        session = gateway.session_of(name, ended=True)
        rows[role] = json.dumps(timeline_json(gateway, session["id"]))
    assert secret in rows["reader"]
    assert secret not in rows["writer"]
    assert "select $1::text" in rows["writer"]  # the statement itself is always recorded


def audit_lines(gateway):
    lines = []
    for path in sorted(glob.glob(os.path.join(gateway.dir, "audit", "*.jsonl"))):
        with open(path) as f:
            lines += [json.loads(line) for line in f if line.strip()]
    return lines


def test_audit_trail_has_real_reasons_and_no_secrets(gateway, new_name):
    name = new_name()
    token = gateway.identity_with_token(name)
    ghost = new_name("ghost")
    assert attempt(gateway.port, {"user": name, "database": "clinic"}, token + "x").code == "28P01"
    assert attempt(gateway.port, {"user": ghost, "database": "clinic"}, token).code == "28P01"
    with gateway.connect(name, token) as conn:
        conn.execute("select 'phi-marker-4471' from patients limit 1").fetchall()
    gateway.session_of(name, ended=True)

    lines = audit_lines(gateway)
    text = json.dumps(lines)
    assert token not in text and token.split("_", 2)[2] not in text, "a token reached the audit"
    assert "phi-marker-4471" not in text, "statement text (PHI) reached the audit trail"

    # OCSF 1.8.0: (class_uid, activity_id) per sallyport event code in metadata.event_code.
    ocsf = {"logon": (3002, 1), "session-start": (6005, 3), "session-end": (3002, 2)}

    def find(code, user, status):
        found = [e for e in lines if e.get("metadata", {}).get("event_code") == code
                 and e.get("status") == status and e.get("user", {}).get("name") == user]
        for e in found:
            cls, act = ocsf[code]
            assert (e["class_uid"], e["activity_id"], e["type_uid"]) == (cls, act, cls * 100 + act)
            assert e["metadata"]["version"] == "1.8.0"
        return found
    assert [e for e in find("logon", name, "Failure") if e.get("status_detail") == "wrong-token"]
    assert [e for e in find("logon", ghost, "Failure")
            if e.get("status_detail") == "unknown-identity"]
    assert find("logon", name, "Success")
    assert find("session-start", name, "Success") and find("session-end", name, "Success")
    # Every line names the one before it.
    assert all(len(e.get("prev", "")) == 64 for e in lines)
