"""The test target is hardened the way docs/hardening.md says (and the harness works).

These run against PostgreSQL alone, without the gateway: they check the target a gateway
relies on, and the raw protocol client the other tests use for exact SQLSTATEs.
"""

import psycopg
import pytest

import pgwire
from conftest import run


@pytest.fixture
def managed_role(pg):
    """A role shaped like an ephemeral one, created directly (not by the gateway)."""
    pg.psql("CREATE ROLE sp_hardening_probe LOGIN PASSWORD 'probe-secret' "
            "IN ROLE sallyport_managed, phi_read")
    yield "sp_hardening_probe"
    pg.psql("DROP ROLE sp_hardening_probe")


def test_admin_is_minimal_and_reachable_over_verified_tls(pg):
    dsn = (f"host=127.0.0.1 port={pg.port} user=sallyport_admin dbname=clinic "
           f"sslmode=verify-full sslrootcert={pg.ca} connect_timeout=10")
    with psycopg.connect(dsn, password=pg.admin_password, autocommit=True) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, "
            "pg_has_role(current_user, 'pg_signal_backend', 'MEMBER'), "
            "(SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()) "
            "FROM pg_roles WHERE rolname = current_user").fetchone()
    assert row == (False, True, False, False, False, True, True)


def test_managed_group_refused_without_tls_and_on_socket(pg, managed_role):
    plain = run(["psql", "-X", "-d", f"host=127.0.0.1 port={pg.port} user={managed_role} "
                 "dbname=clinic sslmode=disable connect_timeout=10", "-c", "SELECT 1"],
                check=False, env={"PGPASSWORD": "probe-secret"})
    assert "pg_hba.conf rejects connection" in plain.stderr, plain.stderr
    local = run(["psql", "-X", "-d", f"host={pg.sockdir} port={pg.port} user={managed_role} "
                 "dbname=clinic connect_timeout=10", "-c", "SELECT 1"],
                check=False, env={"PGPASSWORD": "probe-secret"})
    assert "pg_hba.conf rejects connection" in local.stderr, local.stderr
    # Over TLS from the gateway's address, the password alone is not enough...
    out = pgwire.attempt(pg.port, {"user": managed_role, "database": "clinic"}, "probe-secret",
                         cafile=str(pg.ca), query="SELECT count(*) FROM patients")
    assert out.error is not None and "certificate" in out.message, out
    # ...with the gateway's client certificate it is admitted, with phi_read's rights only.
    dsn = (f"host=127.0.0.1 port={pg.port} user={managed_role} dbname=clinic "
           f"sslmode=verify-full sslrootcert={pg.ca} sslcert={pg.client_cert} "
           f"sslkey={pg.client_key} connect_timeout=10")
    with psycopg.connect(dsn, password="probe-secret", autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM patients").fetchone()[0] == 2000


def test_public_cannot_connect_to_phi_database(pg):
    pg.psql("CREATE ROLE hardening_outsider LOGIN PASSWORD 'outsider-secret'")
    try:
        out = pgwire.attempt(pg.port, {"user": "hardening_outsider", "database": "clinic"},
                             "outsider-secret", cafile=str(pg.ca))
        assert out.code == "42501", out.error
        assert "permission denied for database" in out.message
    finally:
        pg.psql("DROP ROLE hardening_outsider")


def test_wrong_password_is_28p01_via_raw_client(pg):
    out = pgwire.attempt(pg.port, {"user": "sallyport_admin", "database": "clinic"}, "wrong",
                         cafile=str(pg.ca))
    assert out.code == "28P01"
    assert out.message == 'password authentication failed for user "sallyport_admin"'


def test_phi_schema_loaded_deterministically(pg):
    assert pg.scalar("SELECT count(*) FROM patients") == 2000
    assert pg.scalar("SELECT count(*) FROM encounters") == 6000
    assert pg.scalar("SELECT count(*) FROM encounters e LEFT JOIN patients p "
                     "ON p.id = e.patient_id WHERE p.id IS NULL") == 0
    assert pg.psql("SELECT mrn, given_name, family_name FROM patients WHERE id = 1") == \
        "MRN0000001|Ben|Haddad\n"


def test_pgbench_tables_readable_by_phi_read(pg, bench_db):
    assert pg.scalar("SELECT count(*) FROM pgbench_accounts", dbname=bench_db) == 100000
    assert pg.scalar("SELECT has_table_privilege('phi_read', 'pgbench_accounts', 'SELECT')",
                     dbname=bench_db) is True
