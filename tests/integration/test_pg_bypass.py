"""A lease role that changes its own password still cannot walk around the gateway.

PostgreSQL lets any role run `ALTER ROLE current_user PASSWORD '...'`, and the gateway and
the database share loopback here, so the address alone does not tell them apart. The target
admits the managed group only with the gateway's client certificate (pg_hba
`clientcert=verify-ca`, docs/hardening.md), which a user of a session does not have.
"""

import time

import psycopg
import pytest

WALKAROUND_PASSWORD = "walkaround-123"


def direct_conninfo(pg, role, sslmode):
    return (f"host=127.0.0.1 port={pg.port} user={role} dbname=clinic sslmode={sslmode} "
            f"password={WALKAROUND_PASSWORD} connect_timeout=10")


@pytest.fixture
def changed_password_role(gateway, new_name):
    """(identity, token, role): a lease role whose password its own user changed."""
    name = new_name()
    token = gateway.identity_with_token(name, "reader")
    with gateway.connect(name, token) as conn:
        role = conn.execute("select current_user").fetchone()[0]
        assert role.startswith(f"sp_{name}_"), role
        conn.execute(f"ALTER ROLE current_user PASSWORD '{WALKAROUND_PASSWORD}'")
    return name, token, role


@pytest.mark.timeout(90)
def test_changed_password_does_not_log_in_directly_over_tls(gateway, changed_password_role):
    _, _, role = changed_password_role
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(direct_conninfo(gateway.pg, role, "require")).close()
    # Refused by pg_hba for want of the gateway's client certificate, not by a wrong password.
    assert "certificate" in str(refused.value), str(refused.value)


@pytest.mark.timeout(90)
def test_changed_password_does_not_log_in_directly_without_tls(gateway, changed_password_role):
    _, _, role = changed_password_role
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(direct_conninfo(gateway.pg, role, "disable")).close()
    assert "pg_hba.conf rejects connection" in str(refused.value), str(refused.value)


@pytest.mark.timeout(90)
def test_gateway_still_serves_identity_after_password_change(gateway, changed_password_role):
    name, token, _ = changed_password_role
    last_error = None

    def new_session_works():
        nonlocal last_error
        try:
            with gateway.connect(name, token, connect_timeout=10) as conn:
                return conn.execute("select count(*) from patients").fetchone()[0] == 2000
        except psycopg.Error as e:
            last_error = e
            return False

    works = new_session_works()
    deadline = time.monotonic() + 15
    while not works and time.monotonic() < deadline:
        time.sleep(0.5)
        works = new_session_works()
    assert works, (
        "after the lease role's own password change, a new gateway session for the same "
        "identity still fails after 15 s: the gateway must re-key (or replace) a lease whose "
        f"password was changed upstream; last error: {last_error}")


def test_public_cannot_connect_to_any_non_template_database(pg):
    """The check query of docs/hardening.md step 5, as written there, finds nothing."""
    open_to_public = pg.scalar(
        "SELECT coalesce(array_agg(datname), '{}') FROM pg_database "
        "WHERE NOT datistemplate AND datallowconn "
        "AND has_database_privilege('public', datname, 'CONNECT')", dbname="postgres")
    assert open_to_public == [], f"databases PUBLIC may connect to: {open_to_public}"
