"""Soak test: mixed load through one gateway (recording on) for MINUTES, sampling the gateway
every 10 s, then a verdict on growth.

Load, all through the gateway at once:
  - pgbench: 4 clients, prepared, rate-limited to 200 TPS, a mix of point selects (9 in 10)
    and 1,000-row range aggregates (1 in 10);
  - SSH: a loop of `ssh cat` of 4 MiB of base64 text and a short terminal session (ssh -tt);
  - reconnect churn: a loop of `psql -c 'select 1'` (a new session, TLS, token check and
    lease reuse each time).
Samples (every 10 s): gateway RSS, open fds, and a latency probe (a new connection, then the
median of 20 `select 1` on it), into bench/results/soak-<stamp>.csv and a PNG chart.

Verdict: the first half of the run is warm-up. RSS rises there while caches fill: SQLite's
page cache (its default, 2 MiB per store connection) grows with the sessions index until the
store passes 2 MiB, about 15 minutes into this load, and malloc's arenas settle. Over the
second half a least-squares line is fitted to RSS and to open fds; the run fails (exit 1) when
that line rises over the window by more than 5 % and 2 MiB (RSS) or 10 % and 8 (fds), or when
more than 1 % of the load's attempts failed. A single sample varies by several MiB with what is in
flight (a 4 MiB cat holds relay buffers), which is why a trend, not two points, is compared.
"""

import argparse
import csv
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rig import PGBIN, REPO, Rig

INTERVAL = 10
RSS_GROWTH, RSS_SLACK_KIB = 0.05, 2048
FD_GROWTH, FD_SLACK = 0.10, 8
MIN_WINDOW = 8  # samples after warm-up needed for a growth verdict
MAX_FAILED_SHARE = 0.01

POINT = ("\\set aid random(1, 100000 * :scale)\n"
         "SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n")
RANGE = ("\\set aid random(1, 100000 * :scale - 1000)\n"
         "SELECT count(*), sum(abalance) FROM pgbench_accounts\n"
         "    WHERE aid BETWEEN :aid AND :aid + 1000;\n")


class Loop(threading.Thread):
    """Runs one kind of load over and over until stopped, counting attempts and failures."""

    def __init__(self, name, step, pause):
        super().__init__(name=name, daemon=True)
        self.step, self.pause = step, pause
        self.ok = self.failed = 0
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            try:
                self.step()
                self.ok += 1
            except Exception as e:  # a failed attempt is counted and reported, not fatal
                self.failed += 1
                if self.failed <= 3:
                    print(f"  {self.name}: {e}", flush=True)
            self.stopping.wait(self.pause)


def checked(cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, timeout=120, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"exit {r.returncode}: {r.stderr[-300:]!r}")
    return r


def ssh_step(rig):
    opts, dest = rig.ssh_args("sallyport")
    checked(["ssh", *opts, dest, "head -c 3145728 /dev/urandom | base64"])
    checked(["ssh", "-tt", *opts, dest, "ls -l /usr/bin | head -300; ps aux"],
            stdin=subprocess.DEVNULL)


def churn_step(rig):
    checked([PGBIN / "psql", "-X", "-q", "-c", "select 1"], env=rig.env("sallyport"))


def start_pgbench(rig, minutes, directory):
    d = Path(directory)
    (d / "point.sql").write_text(POINT)
    (d / "range.sql").write_text(RANGE)
    cmd = [PGBIN / "pgbench", "-n", "-M", "prepared", "-c", "4", "-j", "2", "-R", "200",
           "-T", str(round(minutes * 60)), "-f", f"{d / 'point.sql'}@9",
           "-f", f"{d / 'range.sql'}@1"]
    return subprocess.Popen([str(c) for c in cmd], env=rig.env("sallyport"),
                            stdout=open(d / "pgbench.out", "w"), stderr=subprocess.STDOUT)


def probe_ms(rig):
    """(connect ms, median select-1 ms) through the gateway."""
    import psycopg
    gw = rig.gateways["sallyport"]
    t0 = time.monotonic()
    with psycopg.connect(host="127.0.0.1", port=gw.pg_port, user="bench", password=gw.token,
                         dbname="clinic", sslmode="require", connect_timeout=30) as c:
        connect = (time.monotonic() - t0) * 1000
        times = []
        for _ in range(20):
            t0 = time.monotonic()
            c.execute("select 1").fetchone()
            times.append((time.monotonic() - t0) * 1000)
    return connect, statistics.median(times)


def sample(rig, started, loops):
    t = round(time.monotonic() - started)
    _, rss, fds, _ = rig.gateways["sallyport"].stats()
    try:
        connect, query = probe_ms(rig)
    except Exception as e:
        print(f"  probe failed: {e}", flush=True)
        connect = query = float("nan")
    return {"t_s": t, "rss_kib": rss, "fds": fds,
            "probe_connect_ms": round(connect, 2), "probe_query_ms": round(query, 3),
            **{f"{lp.name}_ok": lp.ok for lp in loops},
            **{f"{lp.name}_failed": lp.failed for lp in loops}}


def warm_up(samples):
    """The samples of the first half of the run."""
    return samples[:len(samples) // 2]


def trend(samples, key):
    """(mean, rise over the window, rise per hour) of a least-squares line through `key` over
    the samples after warm-up."""
    window = samples[len(warm_up(samples)):]
    t = [s["t_s"] for s in window]
    v = [s[key] for s in window]
    t_mean, v_mean = statistics.mean(t), statistics.mean(v)
    slope = (sum((a - t_mean) * (b - v_mean) for a, b in zip(t, v))
             / sum((a - t_mean) ** 2 for a in t))
    return v_mean, slope * (t[-1] - t[0]), slope * 3600


def verdict(samples, loops, bench):
    """Lines of findings and whether the run passed."""
    n, failed, line = bench
    lines, ok = [line], failed <= MAX_FAILED_SHARE * max(1, n)
    for lp in loops:
        ok &= lp.failed <= MAX_FAILED_SHARE * max(1, lp.ok + lp.failed)
        lines.append(f"{lp.name}: {lp.ok} ok, {lp.failed} failed")
    lat = [s["probe_query_ms"] for s in samples if s["probe_query_ms"] == s["probe_query_ms"]]
    con = [s["probe_connect_ms"] for s in samples
           if s["probe_connect_ms"] == s["probe_connect_ms"]]
    ok &= len(samples) - len(lat) <= MAX_FAILED_SHARE * max(1, len(samples))
    if lat:
        lines.append(f"probe: {len(samples) - len(lat)} failed; select 1 median "
                     f"{statistics.median(lat):.2f} ms (max {max(lat):.2f}); connect median "
                     f"{statistics.median(con):.1f} ms (max {max(con):.1f})")
    window = len(samples) - len(warm_up(samples))
    if window < MIN_WINDOW:
        lines.append(f"only {len(samples)} samples: too few for a growth verdict (run >= 2 min)")
        return lines, ok
    first = warm_up(samples)
    lines.append(f"warm-up (first {first[-1]['t_s'] / 60:.1f} min): RSS {first[0]['rss_kib']} -> "
                 f"{first[-1]['rss_kib']} KiB, fds {first[0]['fds']} -> {first[-1]['fds']}")
    for key, rel, slack, unit in (("rss_kib", RSS_GROWTH, RSS_SLACK_KIB, " KiB"),
                                  ("fds", FD_GROWTH, FD_SLACK, "")):
        mean, rise, per_hour = trend(samples, key)
        grew = rise > mean * rel and rise > slack
        ok &= not grew
        lines.append(f"{key} after warm-up: mean {mean:.0f}{unit}, trend {rise:+.0f}{unit} over "
                     f"the window ({per_hour:+.0f}{unit}/h): "
                     + ("GROWTH" if grew else "no growth")
                     + f" (limit +{rel * 100:.0f} % and +{slack}{unit})")
    return lines, ok


def chart(samples, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t = [s["t_s"] / 60 for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    axes[0].plot(t, [s["rss_kib"] / 1024 for s in samples])
    axes[0].set_ylabel("gateway RSS (MiB)")
    axes[1].plot(t, [s["fds"] for s in samples])
    axes[1].set_ylabel("open fds")
    axes[2].plot(t, [s["probe_query_ms"] for s in samples], label="select 1 (median of 20)")
    axes[2].plot(t, [s["probe_connect_ms"] for s in samples], label="new connection")
    axes[2].set_ylabel("ms")
    axes[2].set_yscale("log")
    axes[2].legend(fontsize=8)
    axes[2].set_xlabel("minutes")
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def soak(rig, minutes, state, csv_path):
    pgbench = start_pgbench(rig, minutes, state)
    loops = [Loop("ssh", lambda: ssh_step(rig), 1.0), Loop("churn", lambda: churn_step(rig), 0.2)]
    for lp in loops:
        lp.start()
    started = time.monotonic()
    samples = []
    with open(csv_path, "w", newline="") as f:
        w = None
        while time.monotonic() - started < minutes * 60:
            time.sleep(INTERVAL - (time.monotonic() - started) % INTERVAL)
            samples.append(sample(rig, started, loops))
            w = w or csv.DictWriter(f, fieldnames=list(samples[0]))
            if len(samples) == 1:
                w.writeheader()
            w.writerow(samples[-1])
            f.flush()
            s = samples[-1]
            print(f"  {s['t_s']:5d} s  RSS {s['rss_kib'] / 1024:6.1f} MiB  fds {s['fds']:4d}  "
                  f"select 1 {s['probe_query_ms']:.2f} ms  connect {s['probe_connect_ms']:.0f} ms",
                  flush=True)
    for lp in loops:
        lp.stopping.set()
    for lp in loops:
        lp.join(timeout=150)
    try:
        pgbench.wait(timeout=120)
    except subprocess.TimeoutExpired:
        pgbench.kill()
        pgbench.wait()
    return samples, loops, pgbench_summary(pgbench.returncode, state)


def pgbench_summary(returncode, directory):
    """(transactions, failed, a line for the verdict) from pgbench's output."""
    text = (Path(directory) / "pgbench.out").read_text(errors="replace")
    done = re.search(r"number of transactions actually processed: (\d+)", text)
    failed = re.search(r"number of failed transactions: (\d+)", text)
    n, f = int(done.group(1)) if done else 0, int(failed.group(1)) if failed else 0
    ok = returncode == 0 and done and n > 0
    return n, (f if ok else max(f, 1)), f"pgbench: exit {returncode}, {n} transactions, {f} failed"


def main(argv):
    ap = argparse.ArgumentParser(prog="bench/soak.sh", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("minutes", nargs="?", type=float, default=30)
    ap.add_argument("--binary", default=str(REPO / "build" / "sallyport"))
    a = ap.parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M", time.gmtime())
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    csv_path, png = out / f"soak-{stamp}.csv", out / f"soak-{stamp}.png"
    state = Path(tempfile.mkdtemp(prefix="sp-soak.", dir="/tmp"))
    rig = Rig(state, a.binary, gateways=("sallyport",))
    try:
        print(f"starting the rig in {state}; soaking for {a.minutes:g} minutes", flush=True)
        rig.start(5, pgbouncer=False)
        samples, loops, bench = soak(rig, a.minutes, state, csv_path)
    finally:
        rig.stop()
    chart(samples, png, f"sallyport soak {stamp} UTC, {a.minutes:g} min: pgbench + SSH + churn")
    lines, ok = verdict(samples, loops, bench)
    print("\n".join(lines))
    print(f"wrote {csv_path.relative_to(REPO)} and {png.relative_to(REPO)}; "
          + ("PASS" if ok else "FAIL"))
    if ok:
        subprocess.run(["rm", "-rf", str(state)])
    else:
        print(f"logs kept in {state}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
