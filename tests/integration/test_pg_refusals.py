"""What the gateway refuses, with which SQLSTATE, while an unrelated session keeps working."""

import time

import psycopg
import pytest

import pgwire
from conftest import run


@pytest.fixture(scope="module")
def bystander(_gateway_session):
    """A session opened before the refusals; each test checks it still answers."""
    gw = _gateway_session
    if not gw.running:
        gw.start()
    token = gw.identity_with_token("bystander", "reader")
    conn = gw.connect("bystander", token)
    yield conn
    conn.close()


@pytest.fixture(autouse=True)
def _bystander_still_works(bystander):
    yield
    assert bystander.execute("SELECT count(*) FROM patients").fetchone()[0] == 2000


def attempt(gateway, user, password, database="clinic", **params):
    return pgwire.attempt(gateway.port, {"user": user, "database": database, **params},
                          password, cafile=str(gateway.ca))


def test_plaintext_startup_gets_tls_required(gateway):
    out = pgwire.attempt(gateway.port, {"user": "anyone", "database": "clinic"}, tls=False)
    assert out.code == "08P01", out.error
    assert "tls" in out.message.lower() and "requir" in out.message.lower(), out.message
    shown = run(["psql", "-X", "-d", f"host=127.0.0.1 port={gateway.port} user=anyone "
                 "dbname=clinic sslmode=disable connect_timeout=10", "-c", "SELECT 1"],
                check=False)
    assert shown.returncode != 0
    assert out.message in shown.stderr


def test_authentication_failures_are_indistinguishable(gateway, new_name):
    real = new_name("real")
    good = gateway.identity_with_token(real, "reader")
    revoked_user = new_name("rvk")
    revoked = gateway.identity_with_token(revoked_user, "reader")
    gateway.cli("cred", "revoke", revoked[len("spt_"):].split("_", 1)[0])
    expired_user = new_name("exp")
    gateway.identity_with_token(expired_user, "reader")
    expired = gateway.issue(expired_user, ttl="2s")
    time.sleep(3)

    wrong_secret = good[:-4] + ("aaaa" if not good.endswith("aaaa") else "bbbb")
    cases = {
        "wrong token": (real, wrong_secret),
        "unknown identity": (new_name("ghost"), good),
        "revoked token": (revoked_user, revoked),
        "expired token": (expired_user, expired),
    }
    seen = {}
    for why, (user, token) in cases.items():
        out = attempt(gateway, user, token)
        assert out.code == "28P01", (why, out.error)
        assert out.message == f'password authentication failed for user "{user}"', (why, out.message)
        seen[why] = (out.error.get("S"), out.code, out.message.replace(user, "USER"))
    assert len(set(seen.values())) == 1, seen
    # The good token still works, so the failures above were about the credential.
    assert attempt(gateway, real, good).error is None


def test_no_grant_for_target_or_database(gateway, new_name):
    # A token is only issued to an identity holding a grant; the grant then goes away.
    nobody = new_name("nogrant")
    token = gateway.identity_with_token(nobody, "reader")
    gateway.cli("revoke", nobody, "reader", "--reason", "test: access ended")
    out = attempt(gateway, nobody, token)
    assert out.code == "42501" and "no grant" in out.message, out.error

    reader = new_name("rdr")
    rtoken = gateway.identity_with_token(reader, "reader")
    out = attempt(gateway, reader, rtoken, database="clinic/postgres")
    assert out.code == "42501" and "no grant" in out.message, out.error
    # An unknown target looks exactly like a target without a grant.
    out = attempt(gateway, reader, rtoken, database="nosuchtarget")
    assert out.code == "42501" and "no grant" in out.message, out.error


@pytest.mark.parametrize("param,value", [("options", "-c work_mem=1GB"),
                                         ("replication", "database")])
def test_startup_parameter_refused(gateway, new_name, param, value):
    name = new_name()
    token = gateway.identity_with_token(name, "reader")
    out = attempt(gateway, name, token, **{param: value})
    assert out.code in ("0A000", "42501"), out.error
    assert param in out.message, out.message


def test_reader_cannot_insert_writer_can(gateway, new_name):
    row = "INSERT INTO patients VALUES (%s, %s, 'Test', 'Person', '2000-01-01', 'X', '00000', '555-0000000')"
    reader = new_name("rdr")
    with gateway.connect(reader, gateway.identity_with_token(reader, "reader")) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc:
            conn.execute(row, (910001, "MRNR910001"))
        assert "permission denied" in str(exc.value)
    writer = new_name("wrt")
    with gateway.connect(writer, gateway.identity_with_token(writer, "writer"),
                         autocommit=False) as conn:
        conn.execute(row, (910002, "MRNW910002"))
        assert conn.execute("SELECT count(*) FROM patients WHERE id = 910002").fetchone()[0] == 1
        conn.rollback()
