"""The benchmarks. Each returns Rows: one figure measured on every path it applies to.

A Row's values map a path ("direct", "pgbouncer", "sallyport", "sallyport-norec") to a number;
its target (when the issue sets one) is checked by report.py. Paths are measured one after
the other, in the same order, inside one run of the rig.
"""

import os
import re
import resource
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rig import PGBIN

PG_PATHS = ("direct", "pgbouncer", "sallyport", "sallyport-norec")
SSH_PATHS = ("direct", "sallyport", "sallyport-norec")
GATEWAYS = ("sallyport", "sallyport-norec")


@dataclass
class Row:
    name: str
    unit: str
    values: dict
    target: str = ""  # the target, in words
    kind: str = ""    # how report.py checks it: ratio, ratio+pgbouncer, added, max
    limit: float = 0.0
    note: str = ""


@dataclass
class Usage:
    """What a gateway spent on one workload: CPU seconds and bytes it read (both legs)."""
    cpu: float = 0.0
    rchar: int = 0
    work: float = 0.0  # transactions, MiB: the unit of the workload
    new_recordings: list = field(default_factory=list)


def gateway_usage(rig, path, run):
    """Run `run()` and return (its result, Usage of the gateway behind `path`, if any)."""
    gw = rig.gateways.get(path)
    if gw is None:
        return run(), None
    before_recs = set(gw.recordings())
    cpu0, _, _, rchar0 = gw.stats()
    result = run()
    cpu1, _, _, rchar1 = gw.stats()
    new = [p for p in gw.recordings() if p not in before_recs]
    return result, Usage(cpu1 - cpu0, rchar1 - rchar0, 0.0, new)


# ---------------------------------------------------------------- pgbench

def run_pgbench(rig, path, args, seconds, log_dir=None):
    """One pgbench run; returns (TPS, transactions). Fails on any failed transaction.

    pgbench's -T clock starts before its clients connect: when connecting took the whole run
    (32 TLS logins on a busy machine), it is run again for twice as long."""
    for attempt in range(3):
        out = pgbench_once(rig, path, args, seconds << attempt, log_dir)
        tps = re.search(r"^tps = ([0-9.]+) \((without|including)", out.stdout, re.M)
        n = re.search(r"number of transactions actually processed: (\d+)", out.stdout)
        failed = re.search(r"number of failed transactions: (\d+)", out.stdout)
        no_failure = not failed or failed.group(1) == "0"
        if out.returncode == 0 and n and n.group(1) == "0" and no_failure:
            print(f"    (no transaction in {seconds << attempt} s via {path}: connecting took "
                  f"it all; again for longer)", flush=True)
            continue
        if out.returncode != 0 or not tps or not n or not no_failure:
            break
        return float(tps.group(1)), int(n.group(1))
    raise RuntimeError(f"pgbench {' '.join(args)} via {path} failed:\n{out.stdout}\n"
                       f"{out.stderr}")


def pgbench_once(rig, path, args, seconds, log_dir):
    clients = int(args[args.index("-c") + 1])
    cmd = [PGBIN / "pgbench", "-n", "-T", str(seconds), "-j", str(min(clients, os.cpu_count())),
           *args]
    if log_dir:
        for f in Path(log_dir).glob("lat*"):
            f.unlink()
        cmd += ["--log", f"--log-prefix={log_dir}/lat"]
    return subprocess.run([str(c) for c in cmd], env=rig.env(path), capture_output=True,
                          text=True, timeout=seconds + 300)


def percentiles_us(log_dir):
    """p50 and p99 of the per-transaction latencies (us) in pgbench --log files."""
    lat = []
    for f in Path(log_dir).glob("lat*"):
        lat += [int(line.split()[2]) for line in f.read_text().splitlines()]
    if not lat:
        raise RuntimeError(f"pgbench wrote no latency log in {log_dir}")
    lat.sort()
    return lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]


def bench_select(rig, seconds, usage):
    """pgbench -S (select only), simple and prepared protocol, 1, 8 and 32 clients: TPS on
    every path. The 1-client simple run also logs every transaction: its p50 and p99 latency
    give the latency added per query. The gateways' CPU and traffic during the 8-client simple
    run go to `usage` (recorder CPU share, recording size against traffic)."""
    rows, lat = [], {}
    for mode in ("simple", "prepared"):
        for clients in (1, 8, 32):
            vals = {}
            for path in PG_PATHS:
                with tempfile.TemporaryDirectory() as d:
                    log = d if (mode, clients) == ("simple", 1) else None
                    args = ["-S", "-M", mode, "-c", str(clients)]
                    (tps, n), use = gateway_usage(
                        rig, path, lambda: run_pgbench(rig, path, args, seconds, log))
                    if log:
                        lat[path] = percentiles_us(d)
                vals[path] = tps
                if use and (mode, clients) == ("simple", 8):
                    use.work = n
                    usage[("query", path)] = use
            row = Row(f"pgbench -S -M {mode} -c {clients}", "TPS", vals)
            if clients == 8:
                row.target, row.kind, row.limit = "≥ 0.85× direct, > pgbouncer", \
                    "ratio+pgbouncer", 0.85
            rows.append(row)
            print(f"  {row.name}: {fmt_vals(vals)}", flush=True)
    for i, (p, limit) in enumerate((("p50", 50), ("p99", 200))):
        rows.append(Row(f"latency {p}, pgbench -S, 1 client", "µs",
                        {path: v[i] for path, v in lat.items()}, f"≤ +{limit} µs over direct",
                        "added", limit))
        print(f"  {rows[-1].name}: {fmt_vals(rows[-1].values)}", flush=True)
    return rows


def bench_connect(rig, seconds):
    """pgbench -S -C: a new connection for every transaction (8 clients), so TLS, the token
    check and the reuse of the upstream lease are in every transaction."""
    vals = {p: run_pgbench(rig, p, ["-S", "-C", "-c", "8"], seconds)[0] for p in PG_PATHS}
    row = Row("pgbench -S -C -c 8 (connection per transaction)", "TPS", vals,
              "≥ 0.5× direct", "ratio", 0.5)
    print(f"  {row.name}: {fmt_vals(vals)}", flush=True)
    return [row]


# ---------------------------------------------------------------- COPY

def copy_rows_for(mib):
    return mib * 1024 * 1024 // 109  # a row of the COPY text below is about 109 bytes


def copy_query(rows):
    return f"copy (select g, repeat('x', 100) from generate_series(1, {rows}) g) to stdout"


def make_copy_file(rig, mib, directory):
    """About `mib` MiB of COPY text, made once (direct) for the COPY-in runs."""
    path = Path(directory) / "copy.txt"
    with open(path, "w") as f:
        subprocess.run(["psql", "-X", "-q", "-c", copy_query(copy_rows_for(mib))],
                       env=rig.env("direct"), stdout=f, check=True)
    return path


def timed(cmd, timeout=3600, **kw):
    """Seconds a command took; raises when it fails."""
    t0 = time.monotonic()
    subprocess.run([str(c) for c in cmd], check=True, timeout=timeout, **kw)
    return time.monotonic() - t0


def bench_copy(rig, mib, directory, usage):
    """COPY ... TO STDOUT and COPY ... FROM STDIN of `mib` MiB with psql: MiB/s each way."""
    data = make_copy_file(rig, mib, directory)
    real_mib = data.stat().st_size / (1 << 20)
    out, inn = {}, {}
    for path in PG_PATHS:
        env = rig.env(path)
        t, use = gateway_usage(rig, path, lambda: timed(
            ["psql", "-X", "-q", "-c", copy_query(copy_rows_for(mib))], env=env,
            stdout=subprocess.DEVNULL))
        out[path] = real_mib / t
        if use:
            use.work = real_mib
            usage[("copy", path)] = use
        inn[path] = real_mib / timed(["psql", "-X", "-q", "-c", f"\\copy copy_sink from '{data}'"],
                                     env=env)
        rig.superuser("TRUNCATE copy_sink")
    data.unlink()
    rows = [Row(f"COPY out {mib} MiB (psql)", "MiB/s", out, "≥ 0.8× direct", "ratio", 0.8),
            Row(f"COPY in {mib} MiB (psql \\copy)", "MiB/s", inn, "≥ 0.8× direct", "ratio", 0.8)]
    for r in rows:
        print(f"  {r.name}: {fmt_vals(r.values)}", flush=True)
    return rows


# ---------------------------------------------------------------- SSH

def make_ssh_payload(mib, directory):
    """`mib` MiB of base64 text from /dev/urandom (text a terminal could show, which zstd
    cannot shrink much), readable by the SSH login."""
    path = Path(directory) / "payload.txt"
    subprocess.run(["bash", "-c", f"head -c {mib * 786432} /dev/urandom | base64 -w 76 | "
                                  f"head -c {mib << 20} > {path}"], check=True)
    os.chmod(path, 0o644)
    return path


def ssh_cat(rig, path, payload):
    opts, dest = rig.ssh_args(path)
    cmd = ["ssh", *opts, dest, f"cat {payload}"]
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    got = 0
    while block := p.stdout.read(1 << 20):
        got += len(block)
    if p.wait(timeout=600) != 0 or got != payload.stat().st_size:
        raise RuntimeError(f"ssh cat via {path}: exit {p.returncode}, {got} bytes")
    return time.monotonic() - t0


def scp(rig, path, src, dst):
    """scp as OpenSSH 9 runs it by default: over the sftp subsystem."""
    opts, dest = rig.ssh_args(path, scp=True)
    src = src.replace("REMOTE:", f"{dest}:")
    dst = dst.replace("REMOTE:", f"{dest}:")
    return timed(["scp", "-q", *opts, src, dst], timeout=1200)


def bench_ssh(rig, mib, directory, usage):
    """SSH bulk transfer of `mib` MiB: `ssh cat FILE` (remote to client), scp upload and scp
    download, direct OpenSSH against the same sshd through each gateway: MiB/s."""
    payload = make_ssh_payload(mib, directory)
    real = payload.stat().st_size / (1 << 20)
    cat, up, down = {}, {}, {}
    for path in SSH_PATHS:
        t, use = gateway_usage(rig, path, lambda: ssh_cat(rig, path, payload))
        cat[path] = real / t
        if use:
            use.work = real
            usage[("ssh", path)] = use
        up[path] = real / scp(rig, path, str(payload), "REMOTE:/dev/null")
        down[path] = real / scp(rig, path, f"REMOTE:{payload}", "/dev/null")
    payload.unlink()
    rows = [Row(f"SSH cat {mib} MiB", "MiB/s", cat, "≥ 0.5× direct", "ratio", 0.5),
            Row(f"scp upload {mib} MiB", "MiB/s", up, "≥ 0.5× direct", "ratio", 0.5),
            Row(f"scp download {mib} MiB", "MiB/s", down, "≥ 0.5× direct", "ratio", 0.5)]
    for r in rows:
        print(f"  {r.name}: {fmt_vals(r.values)}", flush=True)
    return rows


# ---------------------------------------------------------------- memory

def bench_idle_sessions(rig, n):
    """Gateway RSS added by `n` idle, authenticated PostgreSQL sessions, per session, with
    recording (the target) and without (what recording adds). Runs first, on fresh gateways,
    so memory freed by earlier benchmarks does not hide what sessions take."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    vals, notes = {}, []
    for path in GATEWAYS:
        rss0, rss1, fds = idle_rss(rig.gateways[path], n)
        vals[path] = (rss1 - rss0) / n
        notes.append(f"{path}: RSS {rss0 / 1024:.0f} -> {rss1 / 1024:.0f} MiB, {fds} fds")
    row = Row(f"gateway RSS per idle session ({n} sessions)", "KiB", vals, "≤ 64 KiB", "max", 64,
              note="; ".join(notes))
    print(f"  {row.name}: {fmt_vals(row.values)} ({row.note})", flush=True)
    return [row]


def idle_rss(gw, n):
    """(RSS KiB before, RSS KiB with n idle sessions open, open fds then) of one gateway."""
    import psycopg
    kw = dict(host="127.0.0.1", port=gw.pg_port, user="bench", password=gw.token,
              dbname="clinic", sslmode="require", connect_timeout=60)
    psycopg.connect(**kw).close()  # the lease exists before the baseline
    time.sleep(2)
    rss0 = gw.stats()[1]
    conns = []
    try:
        for _ in range(n):
            conns.append(psycopg.connect(**kw))
        time.sleep(3)
        _, rss1, fds, _ = gw.stats()
    finally:
        for c in conns:
            c.close()
    return rss0, rss1, fds


# ---------------------------------------------------------------- recording

def trailer_bytes(spr):
    """(raw_bytes, stored_bytes) from a sealed recording's trailer (recorder/FORMAT.md), or
    None while the recording is not sealed."""
    with open(spr, "rb") as f:
        f.seek(-16, os.SEEK_END)
        offset, magic = struct.unpack(">Q8s", f.read(16))
        if magic != b"SPTREND\n":
            return None
        f.seek(offset)
        head = f.read(40)
    if head[:4] != b"SPTR":
        return None
    return struct.unpack(">QQ", head[24:40])


def sealed(recordings, seconds=30):
    """Trailers of these recordings, waiting for sessions that are still closing."""
    deadline = time.monotonic() + seconds
    while True:
        got = [trailer_bytes(p) for p in recordings]
        if all(got) or time.monotonic() > deadline:
            return [g for g in got if g]
        time.sleep(0.5)


def terminal_session(rig):
    """A terminal (ssh -tt) printing directory listings and process tables: a typical
    operator's output. Returns the bytes the client saw and the session's recordings."""
    opts, dest = rig.ssh_args("sallyport")
    script = ("for i in 1 2 3; do ls -lR /usr/share/doc /usr/lib/python3 2>/dev/null; "
              "ps auxww; done | head -c 33554432")
    return gateway_usage(rig, "sallyport", lambda: len(subprocess.run(
        ["ssh", "-tt", *opts, dest, script], capture_output=True, timeout=300,
        stdin=subprocess.DEVNULL).stdout))


def recording_rows(rig, usage):
    """Recording size against what was relayed, and the recorder's CPU share.

    - terminal output: a terminal session's recording size / bytes the client received;
    - query traffic: the recordings of the pgbench -S -c 8 run / bytes the gateway read on
      both legs (client and PostgreSQL, TLS records included) in that run;
    - zstd alone: stored / raw bytes of the recorded events (the recordings' trailers);
    - recorder CPU share: 1 - (gateway CPU per unit of work without recording) / (with),
      for the same workload (query: per transaction, SSH cat and COPY out: per MiB)."""
    rows = []
    out_bytes, term = terminal_session(rig)
    term_recs = sealed(term.new_recordings)
    rows.append(Row("recording size / terminal output (ssh -tt)", "ratio",
                    {"sallyport": sum(p.stat().st_size for p in term.new_recordings) / out_bytes},
                    note=f"{out_bytes >> 10} KiB of output; zstd stored/raw "
                         f"{ratio_of(term_recs)}"))
    q = usage.get(("query", "sallyport"))
    if q:
        q_recs = sealed(q.new_recordings)
        rows.append(Row("recording size / query traffic (pgbench -S -c 8)", "ratio",
                        {"sallyport": sum(p.stat().st_size for p in q.new_recordings) / q.rchar},
                        note=f"{q.rchar / (1 << 20):.1f} MiB relayed; zstd stored/raw "
                             f"{ratio_of(q_recs)}"))
    for what, unit in (("query", "transaction"), ("ssh", "MiB"), ("copy", "MiB")):
        on, off = usage.get((what, "sallyport")), usage.get((what, "sallyport-norec"))
        if not on or not off or not on.work or not off.work or not on.cpu:
            continue
        per_on, per_off = on.cpu / on.work, off.cpu / off.work
        label = {"query": "pgbench -S -c 8", "ssh": "SSH cat", "copy": "COPY out"}[what]
        rows.append(Row(f"recorder CPU share, {label}", "%",
                        {"sallyport": 100 * (1 - per_off / per_on)},
                        note=f"gateway CPU per {unit}: {per_on * 1e6:.0f} µs recording, "
                             f"{per_off * 1e6:.0f} µs not"))
    for r in rows:
        print(f"  {r.name}: {fmt_vals(r.values)} ({r.note})", flush=True)
    return rows


def ratio_of(trailers):
    raw = sum(t[0] for t in trailers)
    return f"{sum(t[1] for t in trailers) / raw:.3f}" if raw else "-"


def fmt_vals(vals):
    return ", ".join(f"{k} {v:.1f}" for k, v in vals.items())
