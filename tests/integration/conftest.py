"""Harness for the integration suite: a real PostgreSQL 15 and a real sallyport gateway.

Session-wide: one hardened PostgreSQL cluster (tests/lib/pgcluster.sh, the same script the
quickstart uses) and one gateway in front of it, with its own TLS certificate, store,
recordings and audit directories. Tests that stop, kill or reload the gateway use the same
instance and its store; the `gateway` fixture restarts it if a test left it stopped.

Every client call has a timeout, and every test has an alarm (default 120 s, raise it with
@pytest.mark.timeout(N)), so a hang fails the test instead of stalling CI.

Environment: SALLYPORT_BIN (default build/sallyport), PGBIN (default
/usr/lib/postgresql/15/bin).
"""

import itertools
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

REPO = Path(__file__).resolve().parents[2]
PGBIN = Path(os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin"))
PGCLUSTER = REPO / "tests" / "lib" / "pgcluster.sh"
SESSION_NOTICE = "this session is recorded by sallyport (integration tests)"
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")
DEFAULT_TEST_TIMEOUT = 120
CLIENT_TIMEOUT = 60  # seconds for a single client command unless a test says otherwise


class TestTimeout(Exception):
    """A test ran past its alarm."""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, timeout=CLIENT_TIMEOUT, check=True, env=None, input=None):
    """Runs a command with a timeout; on a non-zero exit with check, fails showing its output."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    proc = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=full_env,
        input=input, stdin=None if input is not None else subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"command failed (exit {proc.returncode}): {' '.join(map(str, cmd))}\n"
            f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return proc


def wait_until(predicate, timeout, interval=0.1, what="condition"):
    """Polls predicate until it returns a truthy value; returns it, or fails after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------
# PostgreSQL


class Postgres:
    def __init__(self, state):
        self.state = Path(state)
        self.port = free_port()
        self.admin_password = secrets.token_urlsafe(24)
        self.ca = self.state / "ca.pem"
        # The gateway's client certificate (tests/lib/pgcluster.sh): pg_hba admits the
        # managed group only with it.
        self.client_cert = self.state / "gateway-client.pem"
        self.client_key = self.state / "gateway-client.key"
        self.sockdir = self.state / "pg"
        self.log = self.sockdir / "postgres.log"

    def up(self):
        run([PGCLUSTER, "up", self.state, self.port, self.admin_password], timeout=180)

    def stop(self):
        run([PGCLUSTER, "stop", self.state], timeout=90, check=False)

    def start(self):
        run([PGCLUSTER, "start", self.state], timeout=90)

    def superuser_conninfo(self, dbname="clinic"):
        return f"host={self.sockdir} port={self.port} user=postgres dbname={dbname}"

    def connect(self, dbname="clinic", autocommit=True):
        return psycopg.connect(self.superuser_conninfo(dbname), autocommit=autocommit,
                               connect_timeout=10)

    def psql(self, sql, dbname="clinic", timeout=CLIENT_TIMEOUT):
        """Runs SQL as the superuser through the private socket; returns psql -At output."""
        return run(["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d",
                    self.superuser_conninfo(dbname), "-c", sql], timeout=timeout).stdout

    def scalar(self, sql, dbname="clinic"):
        with self.connect(dbname) as c:
            row = c.execute(sql).fetchone()
            return row[0] if row else None


# ---------------------------------------------------------------------------------------
# The gateway


def openssl_gateway_cert(directory):
    """ECDSA P-256 CA and a gateway certificate for 127.0.0.1/localhost, as the CLI makes them."""
    run([PGCLUSTER, "ca", directory, "gateway-ca"])
    run([PGCLUSTER, "cert", directory, "gateway", "gateway-ca"])


def write_private(path, data):
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    os.chmod(path, 0o600)


BASE_ROLES = {
    "reader": {"targets": "clinic", "databases": "clinic, bench", "db_roles": "phi_read",
               "max_ttl": "1h", "record_params": "yes", "recording": "strict"},
    "writer": {"targets": "clinic", "db_roles": "phi_write", "max_ttl": "1h",
               "recording": "strict"},
    # Logged off after 2 s without client traffic.
    "dozer": {"targets": "clinic", "db_roles": "phi_read", "max_ttl": "1h", "idle_timeout": "2s"},
    # Removed and restored by the reload test.
    "contractor": {"targets": "clinic", "db_roles": "phi_read", "max_ttl": "1h",
                   "recording": "best_effort"},
}


class Gateway:
    def __init__(self, directory, binary, pg):
        self.dir = Path(directory)
        self.bin = Path(binary)
        self.pg = pg
        self.port = free_port()
        self.cfg = self.dir / "sallyport.ini"
        self.ca = self.dir / "gateway-ca.pem"
        self.log = self.dir / "gateway.stderr"
        self.proc = None
        self.log_checked = 0
        self.roles = {k: dict(v) for k, v in BASE_ROLES.items()}
        self.main_extra = {}  # extra [sallyport] keys a test sets (and restores)
        # An ASan build keeps freed memory in quarantine, so RSS checks apply to release only.
        ldd = subprocess.run(["ldd", str(self.bin)], capture_output=True, text=True).stdout
        self.sanitized = "libasan" in ldd

    # -- files -------------------------------------------------------------------------
    def prepare(self):
        for sub in ("state", "recordings", "audit"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        openssl_gateway_cert(self.dir)
        write_private(self.dir / "gateway.secret", secrets.token_bytes(48))
        write_private(
            self.dir / "admin.dsn",
            f"host=127.0.0.1 port={self.pg.port} user=sallyport_admin "
            f"password={self.pg.admin_password} dbname=clinic sslmode=verify-full "
            f"sslrootcert={self.pg.ca}\n",
        )
        self.write_config()
        self.cli("keys", "init")

    def write_config(self):
        lines = [
            "[sallyport]",
            f"pg_listen = 127.0.0.1:{self.port}",
            "tls_cert = gateway.pem",
            "tls_key = gateway.key",
            "workers = 2",
            "store = sqlite:state/sallyport.db",
            "recordings_dir = recordings",
            "audit_dir = audit",
            "gateway_secret_file = gateway.secret",
            "master_key_file = master.keys",
            "signing_key_file = signing.pem",
            "flush_interval = 1s",
            "handshake_timeout = 10s",
            "drain_timeout = 5s",
            "lease_idle = 3s",
            f"session_notice = {SESSION_NOTICE}",
            "log_level = info",
            # Above the 2,000-connection flood the robustness tests hold at once.
            "max_client_conn = 5000",
            *[f"{k} = {v}" for k, v in self.main_extra.items()],
            "",
            "[target clinic]",
            "kind = postgres",
            f"address = 127.0.0.1:{self.pg.port}",
            "database = clinic",
            "upstream_tls = verify-full",
            f"upstream_ca = {self.pg.ca}",
            f"upstream_cert = {self.pg.client_cert}",
            f"upstream_key = {self.pg.client_key}",
            "admin_dsn_file = admin.dsn",
            "connect_timeout = 5s",
        ]
        for name, keys in self.roles.items():
            lines += ["", f"[role {name}]"] + [f"{k} = {v}" for k, v in keys.items()]
        self.cfg.write_text("\n".join(lines) + "\n")

    # -- process -----------------------------------------------------------------------
    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout=30):
        assert not self.running, "gateway already running"
        if not self.bin.exists():
            raise AssertionError(f"gateway binary {self.bin} does not exist (build it, or set SALLYPORT_BIN)")
        logf = open(self.log, "ab")
        logf.write(f"\n--- sallyport serve started at {time.strftime('%H:%M:%S')} ---\n".encode())
        logf.flush()
        self.proc = subprocess.Popen([str(self.bin), "serve", "-c", str(self.cfg)],
                                     stdout=logf, stderr=logf, stdin=subprocess.DEVNULL,
                                     cwd=self.dir)
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"sallyport serve exited with {self.proc.returncode} at start:\n{self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"sallyport serve did not accept on port {self.port} within {timeout}s:\n{self.log_tail()}")

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"sallyport serve did not exit within {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout=30):
        """SIGTERM and wait; returns the exit status (None if it was not running)."""
        if not self.running:
            return None
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"sallyport serve ignored SIGTERM for {timeout}s:\n{self.log_tail()}")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def restart(self):
        if self.running:
            self.stop()
        self.start()

    def reload(self, timeout=30):
        """SIGHUP, then wait until the gateway says it applied (or refused) the file. A fixed
        sleep is not enough: under load, or in the sanitizer build, a reload has taken well
        over a second, and a session started before it ran under the old configuration."""
        said = ("configuration reloaded from", "reload refused, keeping")
        before = sum(self.log_text().count(s) for s in said)
        self.signal(signal.SIGHUP)
        wait_until(lambda: sum(self.log_text().count(s) for s in said) > before, timeout,
                   interval=0.05, what="the gateway to apply the reload (SIGHUP)")

    def log_text(self):
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n=80):
        return "\n".join(self.log_text().splitlines()[-n:])

    def sanitizer_report_since_check(self):
        text = self.log_text()
        new, self.log_checked = text[self.log_checked:], len(text)
        return new if any(m in new for m in SANITIZER_MARKERS) else None

    # -- CLI ---------------------------------------------------------------------------
    def cli(self, *args, check=True, timeout=CLIENT_TIMEOUT):
        proc = run([self.bin, "-c", self.cfg, *args], check=check, timeout=timeout,
                   env={"SALLYPORT_CONFIG": str(self.cfg)})
        if any(m in proc.stderr for m in SANITIZER_MARKERS):
            raise AssertionError(f"sanitizer report from `sallyport {' '.join(args)}`:\n{proc.stderr}")
        return proc

    def add_identity(self, name, kind="human"):
        self.cli("identity", "add", name, "--kind", kind, "--owner", "integration-tests",
                 "--purpose", "integration test identity")

    def grant(self, name, role, reason="integration test"):
        self.cli("grant", name, role, "--reason", reason)

    def issue(self, name, ttl=None):
        args = ["cred", "issue", name] + (["--ttl", ttl] if ttl else [])
        token = self.cli(*args).stdout.splitlines()[0].strip()
        assert re.fullmatch(r"spt_[^_\s]+_\S+", token), f"unexpected token format: {token!r}"
        return token

    def identity_with_token(self, name, role="reader", kind="human"):
        self.add_identity(name, kind)
        if role:
            self.grant(name, role)
        return self.issue(name)

    def sessions(self, live=False):
        out = self.cli("sessions", "--json", *(["--live"] if live else [])).stdout
        return json.loads(out)

    def session_of(self, identity, timeout=10, ended=None):
        """The newest session of `identity` (optionally only ended/live ones), waiting for it."""
        def find():
            rows = [s for s in self.sessions() if s.get("identity") == identity]
            if ended is True:
                rows = [s for s in rows if s.get("ended_at")]
            elif ended is False:
                rows = [s for s in rows if not s.get("ended_at")]
            rows.sort(key=lambda s: s.get("started_at") or "")
            return rows[-1] if rows else None
        return wait_until(find, timeout, interval=0.2, what=f"a session of {identity}")

    def replay(self, session_id):
        return self.cli("replay", session_id).stdout

    # -- clients -----------------------------------------------------------------------
    def dsn(self, identity, token, db="clinic", **extra):
        parts = {"host": "127.0.0.1", "port": str(self.port), "user": identity, "dbname": db,
                 "password": token, "sslmode": "verify-full", "sslrootcert": str(self.ca),
                 "connect_timeout": "10"}
        parts.update({k: str(v) for k, v in extra.items()})
        return " ".join(f"{k}='{v}'" for k, v in parts.items())

    def connect(self, identity, token, db="clinic", autocommit=True, **extra):
        return psycopg.connect(self.dsn(identity, token, db, **extra), autocommit=autocommit)

    def psql(self, identity, token, *args, db="clinic", timeout=CLIENT_TIMEOUT, check=True,
             **extra):
        """psql through the gateway; the token goes in PGPASSWORD, never on the command line."""
        conninfo = self.dsn(identity, "", db, **extra).replace(" password=''", "")
        return run(["psql", "-X", "-v", "ON_ERROR_STOP=1", "-d", conninfo, *args],
                   timeout=timeout, check=check, env={"PGPASSWORD": token})


# ---------------------------------------------------------------------------------------
# Fixtures


def pytest_configure(config):
    config.addinivalue_line("markers", "timeout(seconds): per-test alarm (default 120)")


@pytest.fixture(autouse=True)
def _alarm(request):
    marker = request.node.get_closest_marker("timeout")
    seconds = int(marker.args[0]) if marker else DEFAULT_TEST_TIMEOUT

    def expired(signum, frame):
        raise TestTimeout(f"test exceeded its {seconds}s limit")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="session")
def pg():
    state = Path(tempfile.mkdtemp(prefix="sp-it-"))
    cluster = Postgres(state)
    try:
        cluster.up()
    except Exception:
        log = cluster.log.read_text(errors="replace") if cluster.log.exists() else ""
        cluster.stop()
        raise AssertionError(f"test PostgreSQL did not come up:\n{log[-4000:]}")
    yield cluster
    cluster.stop()
    if os.environ.get("SP_KEEP_TMP") != "1":
        shutil.rmtree(state, ignore_errors=True)


_gateway_instance = None


@pytest.fixture(scope="session")
def _gateway_session(pg, tmp_path_factory):
    global _gateway_instance
    binary = Path(os.environ.get("SALLYPORT_BIN", REPO / "build" / "sallyport"))
    if not binary.is_absolute():
        binary = REPO / binary
    gw = Gateway(tmp_path_factory.mktemp("gateway"), binary, pg)
    gw.prepare()
    gw.start()
    _gateway_instance = gw
    yield gw
    status = gw.stop()
    _gateway_instance = None
    report = gw.sanitizer_report_since_check()
    assert report is None, f"sanitizer report from the gateway:\n{report[-6000:]}"
    assert status in (0, None), f"sallyport serve exited {status} on SIGTERM:\n{gw.log_tail()}"


@pytest.fixture
def gateway(_gateway_session):
    """The running gateway (restarted first if an earlier test left it stopped)."""
    gw = _gateway_session
    if not gw.running:
        gw.start()
    yield gw
    report = gw.sanitizer_report_since_check()
    assert report is None, f"sanitizer report from the gateway during this test:\n{report[-6000:]}"


_names = itertools.count(1)


@pytest.fixture
def new_name(request):
    """Unique, short, lower-case identity names (ephemeral role names embed them)."""
    stem = re.sub(r"[^a-z]", "", request.node.name.replace("test_", ""))[:10] or "t"

    def make(prefix=""):
        return f"{prefix or stem}{next(_names)}"
    return make


@pytest.fixture(scope="session")
def bench_db(pg):
    """Database `bench` with pgbench tables, readable by phi_read; made directly upstream."""
    pg.psql("CREATE DATABASE bench", dbname="postgres")
    run(["pgbench", "-i", "-s", "1", "-q", "-d", pg.superuser_conninfo("bench")], timeout=120)
    pg.psql("REVOKE CONNECT, TEMP ON DATABASE bench FROM PUBLIC; "
            "GRANT CONNECT ON DATABASE bench TO phi_read, phi_write; "
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO phi_read", dbname="bench")
    return "bench"


@pytest.fixture(scope="session")
def ssh_gateway(pg, tmp_path_factory):
    """A second gateway, with an SSH listener, in front of a private sshd (target host1)."""
    from sshenv import Sshd, SshGateway
    binary = Path(os.environ.get("SALLYPORT_BIN", REPO / "build" / "sallyport"))
    if not binary.is_absolute():
        binary = REPO / binary
    base = tmp_path_factory.mktemp("sshgw")
    sshd = Sshd(base / "sshd")
    gw = SshGateway(base / "gateway", binary, pg, sshd)
    gw.prepare_ssh()
    sshd.start()
    gw.start()
    yield gw
    status = gw.stop()
    sshd.stop()
    report = gw.sanitizer_report_since_check()
    assert report is None, f"sanitizer report from the SSH gateway:\n{report[-6000:]}"
    assert status in (0, None), f"sallyport serve exited {status} on SIGTERM:\n{gw.log_tail()}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and _gateway_instance is not None:
        rep.sections.append(("sallyport serve stderr (tail)", _gateway_instance.log_tail(120)))
