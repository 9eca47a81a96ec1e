"""The benchmark rig: everything the benchmarks measure, started on loopback.

  - a private PostgreSQL 15 cluster (tests/lib/pgcluster.sh: TLS, hardened pg_hba);
  - two sallyport gateways, each with its own directory, store and keys:
      "sallyport"        records every session (recording = strict, the shipped default);
      "sallyport-norec"  does not record: there is no switch that turns recording off, so
                         its roles say recording = best_effort and its recordings_dir cannot
                         hold the YYYY/ directory a recording needs (a regular file sits in
                         its place). Each session then runs unrecorded and the gateway audits
                         a recording gap for it - the cost of recording is the difference.
  - pgbouncer (Debian package) in session mode, TLS on both legs;
  - a private OpenSSH sshd (the SSH target) that trusts both gateways' target CAs and, for
    the direct path, one plain user key (AuthorizedKeysFile).

Both gateways start before any session: a gateway sweeps orphaned lease roles of the managed
group at start, and the other gateway's live roles would look orphaned to it.
"""

import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PGBIN = Path(os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin"))
PGCLUSTER = REPO / "tests" / "lib" / "pgcluster.sh"
SSH_LOGIN = "sp-bench"
IDENTITY = "bench"
# AES-GCM on every SSH leg, the direct path included: every path pays for the same cipher.
SSH_CIPHER = "aes128-gcm@openssh.com"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(cmd, **kw):
    """Run a command, raise with its output when it fails."""
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n"
                           f"{r.stdout}\n{r.stderr}")
    return r


def wait_port(port, what, proc=None, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited at start ({proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} does not listen on 127.0.0.1:{port}")


def proc_stat(pid):
    """(cpu seconds used, RSS KiB, open fds, bytes read) of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    with open(f"/proc/{pid}/status") as f:
        rss = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/io") as f:
        rchar = int(re.search(r"rchar:\s+(\d+)", f.read()).group(1))
    return cpu, rss, fds, rchar


def ensure_login(name):
    """A local account the sshd lets in with a key or a certificate (not locked)."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        sh(["useradd", "-m", "-s", "/bin/bash", name])
    sh(["usermod", "-p", "*", name])
    return Path(pwd.getpwnam(name).pw_dir)


class Gateway:
    """One sallyport gateway with a PostgreSQL and an SSH listener, in its own directory."""

    def __init__(self, rig, name, recording):
        self.rig = rig
        self.name = name
        self.recording = recording
        self.dir = rig.state / name
        self.cfg = self.dir / "sallyport.ini"
        self.pg_port, self.ssh_port = free_port(), free_port()
        self.proc = None
        self.token = None
        self.ssh_key = self.dir / "id_ed25519"

    def cli(self, *args):
        return sh([self.rig.bin, "-c", self.cfg, *args])

    def prepare(self):
        """Configuration, keys and CAs; returns the target CA line the sshd must trust."""
        st, d = self.rig.state, self.dir
        d.mkdir()
        for f in ("gw.pem", "gw.key"):
            shutil.copy(st / f, d / f)
        (d / "secret").write_bytes(os.urandom(32))
        (d / "admin.dsn").write_text(
            f"host=127.0.0.1 port={self.rig.pg_port} user=sallyport_admin "
            f"password={self.rig.admin_pw} dbname=clinic sslmode=verify-full "
            f"sslrootcert={st / 'ca.pem'}\n")
        for f in ("secret", "admin.dsn", "gw.key"):
            os.chmod(d / f, 0o600)
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / "ssh_host_key"])
        if not self.recording:
            self._block_recordings()
        self.cfg.write_text(self._ini())
        self.cli("keys", "init")
        self.cli("ca", "init")
        return self.cli("ca", "show", "--target-ca").stdout.strip()

    def _block_recordings(self):
        """A regular file where the YYYY/ directory of a recording would go."""
        rec = self.dir / "recordings"
        rec.mkdir(mode=0o700)
        year = time.gmtime().tm_year
        for y in (year - 1, year, year + 1):
            (rec / f"{y:04d}").write_text("the benchmark's unrecorded gateway: no recordings\n")

    def _ini(self):
        policy = "strict" if self.recording else "best_effort"
        rig = self.rig
        return f"""[sallyport]
pg_listen = 127.0.0.1:{self.pg_port}
ssh_listen = 127.0.0.1:{self.ssh_port}
ssh_host_key = ssh_host_key
ssh_user_ca_key = user_ca.pem
ssh_target_ca_key = target_ca.pem
tls_cert = gw.pem
tls_key = gw.key
store = sqlite:state/store.db
recordings_dir = recordings
audit_dir = audit
gateway_secret_file = secret
master_key_file = master.keys
signing_key_file = signing.pem
max_client_conn = 5000
log_level = warn

[target clinic]
kind = postgres
address = 127.0.0.1:{rig.pg_port}
database = clinic
upstream_ca = {rig.state / 'ca.pem'}
upstream_cert = {rig.state / 'gateway-client.pem'}
upstream_key = {rig.state / 'gateway-client.key'}
admin_dsn_file = admin.dsn

[target host1]
kind = ssh
address = 127.0.0.1:{rig.sshd_port}
host_key = {rig.sshd_host_pub}

[role reader]
targets = clinic
db_roles = phi_read
recording = {policy}

[role ops]
targets = host1
logins = {SSH_LOGIN}
recording = {policy}
"""

    def start(self):
        log = open(self.dir / "gateway.log", "ab")
        self.proc = subprocess.Popen([self.rig.bin, "serve", "-c", self.cfg], stdout=log,
                                     stderr=log, stdin=subprocess.DEVNULL, cwd=self.dir)
        log.close()
        wait_port(self.pg_port, f"gateway {self.name} (see {self.dir}/gateway.log)", self.proc)
        wait_port(self.ssh_port, f"gateway {self.name} SSH listener", self.proc)

    def enrol(self):
        """The benchmark identity: both roles, a PostgreSQL token and an SSH certificate."""
        self.cli("identity", "add", IDENTITY, "--kind", "service", "--owner", "bench",
                 "--purpose", "benchmark")
        self.cli("grant", IDENTITY, "reader", "--reason", "benchmark")
        self.cli("grant", IDENTITY, "ops", "--reason", "benchmark")
        self.token = self.cli("cred", "issue", IDENTITY, "--ttl", "8h").stdout.splitlines()[0]
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.ssh_key])
        self.cli("cred", "issue", IDENTITY, "--ssh-key", f"{self.ssh_key}.pub", "--ttl", "8h",
                 "--force")

    def stats(self):
        return proc_stat(self.proc.pid)

    def recordings(self):
        return sorted((self.dir / "recordings").rglob("*.spr"))

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Rig:
    """The cluster, the two gateways, pgbouncer and the sshd, all on loopback."""

    def __init__(self, state, binary, gateways=("sallyport", "sallyport-norec")):
        self.state = Path(state)
        self.bin = Path(binary).resolve()
        self.pg_port, self.pgb_port, self.sshd_port = free_port(), free_port(), free_port()
        self.admin_pw = secrets.token_urlsafe(18)
        self.direct_pw = secrets.token_urlsafe(18)
        self.gateways = {n: Gateway(self, n, n == "sallyport") for n in gateways}
        self.procs = []
        self.sshd_dir = self.state / "sshd"
        self.direct_key = self.state / "direct_id_ed25519"

    # ---- PostgreSQL ----
    def superuser(self, sql, db="clinic"):
        sh([PGBIN / "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.state / "pg", "-p",
            self.pg_port, "-U", "postgres", "-d", db, "-c", sql])

    def start_postgres(self, scale):
        sh(["bash", PGCLUSTER, "up", self.state, self.pg_port, self.admin_pw])
        # 1,000 idle sessions need 1,000 backends behind them.
        self.superuser("ALTER SYSTEM SET max_connections = 1200")
        self.superuser("ALTER SYSTEM SET shared_buffers = '256MB'")
        sh(["bash", PGCLUSTER, "stop", self.state])
        sh(["bash", PGCLUSTER, "start", self.state])
        sh([PGBIN / "pgbench", "-i", "-q", "-s", scale, "-h", self.state / "pg", "-p",
            self.pg_port, "-U", "postgres", "clinic"])
        self.superuser(
            "CREATE TABLE copy_sink (id int, payload text);"
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO phi_read;"
            "GRANT SELECT, INSERT ON copy_sink TO phi_read;"
            f"CREATE ROLE bench_direct LOGIN PASSWORD '{self.direct_pw}' IN ROLE phi_read")

    # ---- the whole rig ----
    def start(self, scale, pgbouncer=True):
        os.chmod(self.state, 0o711)
        self.start_postgres(scale)
        sh(["bash", PGCLUSTER, "ca", self.state, "gwca"])
        sh(["bash", PGCLUSTER, "cert", self.state, "gw", "gwca"])
        self._prepare_sshd_keys()
        ca_lines = [gw.prepare() for gw in self.gateways.values()]
        self._start_sshd(ca_lines)
        for gw in self.gateways.values():
            gw.start()
            self.procs.append(gw)
        for gw in self.gateways.values():
            gw.enrol()
        if pgbouncer:
            self._start_pgbouncer()

    def _prepare_sshd_keys(self):
        self.sshd_dir.mkdir()
        self.home = ensure_login(SSH_LOGIN)
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.sshd_dir / "host_key"])
        pub = (self.sshd_dir / "host_key.pub").read_text().split()
        self.sshd_host_pub = f"{pub[0]} {pub[1]}"
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.direct_key])

    def _start_sshd(self, ca_lines):
        d = self.sshd_dir
        (d / "trusted_user_ca.pub").write_text("\n".join(ca_lines) + "\n")
        (d / "authorized_keys").write_text(Path(f"{self.direct_key}.pub").read_text())
        (d / "sshd_config").write_text("\n".join([
            f"Port {self.sshd_port}", "ListenAddress 127.0.0.1", f"HostKey {d / 'host_key'}",
            f"PidFile {d / 'sshd.pid'}", f"TrustedUserCAKeys {d / 'trusted_user_ca.pub'}",
            f"AuthorizedKeysFile {d / 'authorized_keys'}", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "PermitTTY yes",
            "MaxStartups 100:30:200", "MaxSessions 50", "LogLevel ERROR",
            "Subsystem sftp internal-sftp", ""]))
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        log = open(d / "sshd.log", "ab")
        p = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", d / "sshd_config"], stdout=log,
                             stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        self.procs.append(p)
        wait_port(self.sshd_port, f"sshd (see {d}/sshd.log)", p)

    def _start_pgbouncer(self):
        st = self.state
        (st / "pgb.users").write_text(f'"bench_direct" "{self.direct_pw}"\n')
        os.chmod(st / "pgb.users", 0o600)
        (st / "pgbouncer.ini").write_text(f"""[databases]
clinic = host=127.0.0.1 port={self.pg_port} dbname=clinic

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.pgb_port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {st / 'pgb.users'}
pool_mode = session
max_client_conn = 2000
default_pool_size = 1100
ignore_startup_parameters = extra_float_digits
client_tls_sslmode = require
client_tls_cert_file = {st / 'gw.pem'}
client_tls_key_file = {st / 'gw.key'}
server_tls_sslmode = verify-full
server_tls_ca_file = {st / 'ca.pem'}
logfile = {st / 'pgbouncer.log'}
""")
        # pgbouncer refuses to run as root: it runs as the cluster's unprivileged user.
        (st / "pgbouncer.log").touch()
        for f in ("pgb.users", "gw.key", "gw.pem", "ca.pem", "pgbouncer.ini", "pgbouncer.log"):
            shutil.chown(st / f, "sallyport-test")
        p = subprocess.Popen(["runuser", "-u", "sallyport-test", "--", "pgbouncer",
                              str(st / "pgbouncer.ini")], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        self.procs.append(p)
        wait_port(self.pgb_port, f"pgbouncer (see {st}/pgbouncer.log)", p)

    # ---- how clients reach each path ----
    def env(self, path):
        """libpq environment for one path (TLS required on every one)."""
        if path == "direct":
            port, user, pw = self.pg_port, "bench_direct", self.direct_pw
        elif path == "pgbouncer":
            port, user, pw = self.pgb_port, "bench_direct", self.direct_pw
        else:
            gw = self.gateways[path]
            port, user, pw = gw.pg_port, IDENTITY, gw.token
        return dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(port), PGUSER=user,
                    PGPASSWORD=pw, PGDATABASE="clinic", PGSSLMODE="require")

    def ssh_args(self, path, scp=False):
        """OpenSSH client options and the destination for one path."""
        if path == "direct":
            port, key, dest = self.sshd_port, self.direct_key, f"{SSH_LOGIN}@127.0.0.1"
            cert = []
        else:
            gw = self.gateways[path]
            port, key, dest = gw.ssh_port, gw.ssh_key, f"{SSH_LOGIN}+host1@127.0.0.1"
            cert = ["-o", f"CertificateFile={key}-cert.pub"]
        opts = ["-P" if scp else "-p", str(port), "-i", str(key), *cert,
                "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", f"Ciphers={SSH_CIPHER}"]
        return opts, dest

    def stop(self):
        for p in reversed(self.procs):
            if isinstance(p, Gateway):
                p.stop()
                continue
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["bash", PGCLUSTER, "stop", self.state], capture_output=True)
