"""sallyport benchmarks: every figure side by side, in one run, as a ratio to direct.

Paths compared, TLS on every leg that has one:
  direct     pgbench -> PostgreSQL 15
  pgbouncer  pgbench -> pgbouncer (session mode) -> PostgreSQL
  sallyport  pgbench -> sallyport (recording on) -> PostgreSQL

Writes bench/results/<stamp>.md and .png, and appends the table to bench/RESULTS.md (older
rows stay, so regressions show). Run through bench/run.sh, which installs what is missing.
"""

import argparse
import os
import platform
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PGBIN = Path(os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin"))
PGCLUSTER = REPO / "tests" / "lib" / "pgcluster.sh"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(cmd, **kw):
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True, **kw)


class Rig:
    """A PostgreSQL cluster, a gateway and a pgbouncer in front of it, all on loopback."""

    def __init__(self, state, binary):
        self.state = Path(state)
        self.bin = Path(binary)
        self.pg_port, self.gw_port, self.pgb_port = free_port(), free_port(), free_port()
        self.admin_pw = secrets.token_urlsafe(18)
        self.direct_pw = secrets.token_urlsafe(18)
        self.procs = []

    def superuser(self, sql, db="clinic"):
        sh([PGBIN / "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.state / "pg", "-p",
            self.pg_port, "-U", "postgres", "-d", db, "-c", sql])

    def start(self, scale):
        sh(["bash", PGCLUSTER, "up", self.state, self.pg_port, self.admin_pw])
        # 1,000 idle sessions need 1,000 backends behind them.
        self.superuser("ALTER SYSTEM SET max_connections = 1200")
        self.superuser("ALTER SYSTEM SET shared_buffers = '256MB'")
        sh(["bash", PGCLUSTER, "stop", self.state])
        sh(["bash", PGCLUSTER, "start", self.state])
        sh([PGBIN / "pgbench", "-i", "-q", "-s", scale, "-h", self.state / "pg", "-p",
            self.pg_port, "-U", "postgres", "clinic"])
        self.superuser("CREATE TABLE IF NOT EXISTS copy_sink (id int, payload text)")
        self.superuser(
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO phi_read;"
            "GRANT SELECT, INSERT ON copy_sink TO phi_read;"
            f"CREATE ROLE bench_direct LOGIN PASSWORD '{self.direct_pw}' IN ROLE phi_read")
        self._gateway()
        self._pgbouncer()

    def _gateway(self):
        st = self.state
        sh(["bash", PGCLUSTER, "ca", st, "gwca"])
        sh(["bash", PGCLUSTER, "cert", st, "gw", "gwca"])
        (st / "secret").write_bytes(os.urandom(32))
        os.chmod(st / "secret", 0o600)
        (st / "admin.dsn").write_text(
            f"host=127.0.0.1 port={self.pg_port} user=sallyport_admin password={self.admin_pw} "
            f"dbname=clinic sslmode=verify-full sslrootcert={st / 'ca.pem'}\n")
        os.chmod(st / "admin.dsn", 0o600)
        client = ""
        if (st / "gateway-client.pem").exists():
            client = "upstream_cert = gateway-client.pem\nupstream_key = gateway-client.key\n"
        (st / "sallyport.ini").write_text(f"""[sallyport]
pg_listen = 127.0.0.1:{self.gw_port}
tls_cert = gw.pem
tls_key = gw.key
store = sqlite:state/store.db
recordings_dir = state/recordings
audit_dir = state/audit
gateway_secret_file = secret
max_client_conn = 5000
log_level = warn

[target clinic]
address = 127.0.0.1:{self.pg_port}
database = clinic
upstream_ca = ca.pem
admin_dsn_file = admin.dsn
{client}
[role reader]
targets = clinic
db_roles = phi_read
""")
        self.gw_log = open(st / "gateway.log", "w")
        self.gw = subprocess.Popen([self.bin, "serve", "-c", st / "sallyport.ini"],
                                   stdout=self.gw_log, stderr=self.gw_log)
        self.procs.append(self.gw)
        self._wait_port(self.gw_port)
        cli = [self.bin, "-c", st / "sallyport.ini"]
        sh(cli + ["identity", "add", "bench", "--kind", "service", "--owner", "bench",
                  "--purpose", "benchmark"])
        sh(cli + ["grant", "bench", "reader", "--reason", "benchmark"])
        self.token = sh(cli + ["cred", "issue", "bench", "--ttl", "1h"]).stdout.splitlines()[0]

    def _pgbouncer(self):
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
        for f in ("pgb.users", "gw.key", "pgbouncer.ini", "pgbouncer.log"):
            shutil.chown(st / f, "sallyport-test")
        p = subprocess.Popen(["runuser", "-u", "sallyport-test", "--", "pgbouncer",
                              str(st / "pgbouncer.ini")], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        self.procs.append(p)
        self._wait_port(self.pgb_port)

    def _wait_port(self, port):
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"nothing listens on {port}; see {self.state}")

    def env(self, path):
        """libpq environment for one path."""
        if path == "direct":
            port, user, pw = self.pg_port, "bench_direct", self.direct_pw
        elif path == "pgbouncer":
            port, user, pw = self.pgb_port, "bench_direct", self.direct_pw
        else:
            port, user, pw = self.gw_port, "bench", self.token
        return dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(port), PGUSER=user,
                    PGPASSWORD=pw, PGDATABASE="clinic", PGSSLMODE="require")

    def stop(self):
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["bash", PGCLUSTER, "stop", self.state], capture_output=True)


PATHS = ("direct", "pgbouncer", "sallyport")


def pgbench(rig, path, args, seconds):
    out = subprocess.run([PGBIN / "pgbench", "-n", "-T", str(seconds), *args], env=rig.env(path),
                         capture_output=True, text=True)
    m = re.search(r"^tps = ([0-9.]+) \((without|including)", out.stdout, re.M)
    failed = re.search(r"number of failed transactions: (\d+)", out.stdout)
    if out.returncode != 0 or not m or (failed and failed.group(1) != "0"):
        raise RuntimeError(f"pgbench {args} via {path} failed:\n{out.stdout}\n{out.stderr}")
    return float(m.group(1))


def latency(rig, path, seconds):
    """p50 and p99 of per-transaction latency (us) from pgbench --log, one client."""
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([PGBIN / "pgbench", "-n", "-S", "-c", "1", "-T", str(seconds), "--log",
                        f"--log-prefix={d}/lat"], env=rig.env(path), capture_output=True,
                       check=True)
        lat = []
        for f in Path(d).glob("lat*"):
            for line in f.read_text().splitlines():
                lat.append(int(line.split()[2]))
    lat.sort()
    return lat[len(lat) // 2], lat[int(len(lat) * 0.99)]


def copy_mb_s(rig, path, data_file, mib):
    """COPY TO STDOUT and COPY FROM STDIN of the same data, MiB/s each way."""
    out = f"copy (select g, repeat('x', 100) from generate_series(1, {data_file[1]}) g) to stdout"
    t0 = time.monotonic()
    subprocess.run(["psql", "-X", "-q", "-o", "/dev/null", "-c", out], env=rig.env(path),
                   check=True)
    t_out = time.monotonic() - t0
    t0 = time.monotonic()
    subprocess.run(["psql", "-X", "-q", "-c", f"\\copy copy_sink from '{data_file[0]}'"],
                   env=rig.env(path), check=True)
    t_in = time.monotonic() - t0
    rig.superuser("TRUNCATE copy_sink")
    return mib / t_out, mib / t_in


def copy_data(rig, mib, directory):
    """A file of about `mib` MiB of COPY text, made once; returns (path, rows)."""
    rows = mib * 1024 * 1024 // 110
    path = Path(directory) / "copy.txt"
    sql = f"copy (select g, repeat('x', 100) from generate_series(1, {rows}) g) to stdout"
    with open(path, "w") as f:
        subprocess.run(["psql", "-X", "-q", "-c", sql], env=rig.env("direct"), stdout=f,
                       check=True)
    return str(path), rows


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def idle_sessions_kib(rig, n):
    import psycopg
    before = rss_kib(rig.gw.pid)
    conns = []
    env = rig.env("sallyport")
    for _ in range(n):
        conns.append(psycopg.connect(host="127.0.0.1", port=env["PGPORT"], user="bench",
                                     password=rig.token, dbname="clinic", sslmode="require"))
    time.sleep(2)
    after = rss_kib(rig.gw.pid)
    for c in conns:
        c.close()
    return (after - before) / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10, help="per pgbench measurement")
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--copy-mib", type=int, default=1024)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--binary", default=str(REPO / "build" / "sallyport"))
    a = ap.parse_args()

    state = Path(tempfile.mkdtemp(prefix="sp-bench.", dir="/tmp"))
    os.chmod(state, 0o711)
    rig = Rig(state, a.binary)
    rows = []  # (measure, unit, {path: value})
    try:
        rig.start(a.scale)
        for mode in ("simple", "prepared"):
            for clients in (1, 8, 32):
                vals = {p: pgbench(rig, p, ["-S", "-M", mode, "-c", str(clients), "-j", "2"],
                                   a.seconds) for p in PATHS}
                rows.append((f"pgbench -S -M {mode} -c {clients}", "TPS", vals))
                print(rows[-1], flush=True)
        lat = {p: latency(rig, p, a.seconds) for p in PATHS}
        rows.append(("latency p50, 1 client", "us", {p: v[0] for p, v in lat.items()}))
        rows.append(("latency p99, 1 client", "us", {p: v[1] for p, v in lat.items()}))
        vals = {p: pgbench(rig, p, ["-S", "-C", "-c", "8", "-j", "2"], a.seconds) for p in PATHS}
        rows.append(("pgbench -S -C -c 8 (connection per transaction)", "TPS", vals))
        print(rows[-1], flush=True)
        data = copy_data(rig, a.copy_mib, state)
        copies = {p: copy_mb_s(rig, p, data, a.copy_mib) for p in PATHS}
        os.unlink(data[0])
        rows.append((f"COPY out {a.copy_mib} MiB", "MiB/s", {p: v[0] for p, v in copies.items()}))
        rows.append((f"COPY in {a.copy_mib} MiB", "MiB/s", {p: v[1] for p, v in copies.items()}))
        print(rows[-2:], flush=True)
        per = idle_sessions_kib(rig, a.idle)
        rows.append((f"gateway RSS per idle session ({a.idle} sessions)", "KiB",
                     {"sallyport": per}))
    finally:
        rig.stop()
    report(rows, a)
    shutil.rmtree(state, ignore_errors=True)


def report(rows, a):
    stamp = time.strftime("%Y%m%d-%H%M", time.gmtime())
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    pgb = subprocess.run(["pgbouncer", "--version"], capture_output=True, text=True).stdout
    head = (f"### {stamp} UTC, commit {commit}, {os.cpu_count()} cores, "
            f"{platform.platform()}, PostgreSQL 15, {pgb.splitlines()[0] if pgb else 'pgbouncer'}"
            f"\n\n`bench/run.sh --seconds {a.seconds} --copy-mib {a.copy_mib} --idle {a.idle}`"
            "; TLS on every leg; sallyport records every session.\n\n"
            "| measure | unit | direct | pgbouncer | sallyport | sallyport/direct | "
            "sallyport/pgbouncer |\n|---|---|---:|---:|---:|---:|---:|\n")
    lines = []
    for name, unit, v in rows:
        d, b, s = v.get("direct"), v.get("pgbouncer"), v.get("sallyport")

        def fmt(x):
            return "-" if x is None else (f"{x:.0f}" if x >= 100 else f"{x:.1f}")

        def ratio(x, y):
            return "-" if x is None or not y else f"{x / y:.2f}"
        lines.append(f"| {name} | {unit} | {fmt(d)} | {fmt(b)} | {fmt(s)} | {ratio(s, d)} | "
                     f"{ratio(s, b)} |")
    table = head + "\n".join(lines) + "\n"
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"{stamp}.md").write_text(table)
    with open(REPO / "bench" / "RESULTS.md", "a") as f:
        f.write("\n" + table)
    chart(rows, out / f"{stamp}.png")
    print(table)


def chart(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tps = [(n, v) for n, u, v in rows if u == "TPS"]
    fig, ax = plt.subplots(figsize=(11, 5))
    width = 0.27
    for i, p in enumerate(PATHS):
        ax.bar([x + (i - 1) * width for x in range(len(tps))], [v.get(p, 0) for _, v in tps],
               width, label=p)
    ax.set_xticks(range(len(tps)))
    ax.set_xticklabels([n.replace("pgbench ", "") for n, _ in tps], rotation=20, ha="right",
                       fontsize=8)
    ax.set_ylabel("transactions per second")
    ax.set_title("pgbench through sallyport vs direct and pgbouncer (TLS on every leg)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
