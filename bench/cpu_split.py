#!/usr/bin/env python3
"""Where the CPU goes under load: the share of each process group (postgres, pgbench,
pgbouncer, sallyport, ssh, sshd) on each path, and how idle the machine was.

    /usr/bin/python3 bench/cpu_split.py --binary build-bench/sallyport [--clients 8]
        [--seconds 15] [--ssh-mib 1024] [--perf PREFIX]

It starts the same rig as run.py (one recording gateway) and runs, on each path in turn:
`pgbench -S -c CLIENTS` for SECONDS (direct, pgbouncer, sallyport), sampling /proc from 4 s
into the run until 3 s before its end; then `ssh cat` of an SSH-MIB text file (direct,
sallyport), sampled from its start to its end. With --perf it also records the gateway with
`perf record -g -e cpu-clock` over those windows, into PREFIX-pgbench.data and
PREFIX-ssh.data (read them with `perf report -i FILE --no-children --sort dso`). On a
2-core machine the parts share the cores: what the gateway uses is taken from the others.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import measure  # noqa: E402
from rig import PGBIN, Rig  # noqa: E402


def snapshot():
    """({(group, pid): cpu seconds}, /proc/stat cpu line) at this moment. A process's CPU
    includes its reaped children's, so a process that exits inside the window (an sshd session,
    the ssh client, a postgres backend) still counts, in its parent's group; this script's own
    group is "client" (the ssh client it reaps, and its reading of the output)."""
    ticks = os.sysconf("SC_CLK_TCK")
    use = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")].split()[0]
        group = "postgres" if comm.startswith(("postgres", "postmaster")) else comm
        if int(pid) == os.getpid():
            group = "client"
        elif pid == "1":
            group = "orphans reaped by init"
        fields = stat.rsplit(")", 1)[1].split()
        use[(group, pid)] = sum(int(x) for x in fields[11:15]) / ticks  # u, s, cu, cs
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    return use, cpu


def split(before, after, seconds):
    """({group: % of one core}, % of all cores idle) between two snapshots."""
    groups = {}
    for key, cpu in after[0].items():
        groups[key[0]] = groups.get(key[0], 0.0) + cpu - before[0].get(key, 0.0)
    idle = sum(after[1][3:5]) - sum(before[1][3:5])
    total = sum(after[1]) - sum(before[1])
    shares = {g: 100 * c / seconds for g, c in groups.items() if c / seconds >= 0.01}
    return shares, 100 * idle / max(total, 1)


def report(path, rate, unit, before, after, seconds):
    shares, idle = split(before, after, seconds)
    top = sorted(shares.items(), key=lambda kv: -kv[1])[:5]
    print(f"{path:10} {rate:8.0f} {unit:5}  idle {idle:4.1f}%  " +
          ", ".join(f"{g} {s:.0f}%" for g, s in top), flush=True)


def perf_record(pid, out, seconds=None):
    cmd = ["perf", "record", "-q", "-g", "-e", "cpu-clock", "-F", "2000", "-o", out, "-p",
           str(pid)]
    if seconds:
        cmd += ["--", "sleep", str(seconds)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pgbench_split(rig, a, gateway_pid):
    for path in ("direct", "pgbouncer", "sallyport"):
        bench = subprocess.Popen(
            [str(PGBIN / "pgbench"), "-n", "-S", "-T", str(a.seconds), "-c", str(a.clients),
             "-j", str(min(a.clients, os.cpu_count()))],
            env=rig.env(path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        window = a.seconds - 7
        time.sleep(4)
        perf = None
        if a.perf and path == "sallyport":
            perf = perf_record(gateway_pid, f"{a.perf}-pgbench.data", window)
        before, t0 = snapshot(), time.monotonic()
        time.sleep(window)
        after, t1 = snapshot(), time.monotonic()
        out, err = bench.communicate()
        if perf:
            perf.wait()
        tps = next((line.split()[2] for line in out.splitlines() if line.startswith("tps = ")),
                   None)
        if bench.returncode != 0 or tps is None:
            sys.exit(f"pgbench via {path} failed:\n{out}\n{err}")
        report(path, float(tps), "TPS", before, after, t1 - t0)


def ssh_split(rig, a, gateway_pid, state):
    payload = measure.make_ssh_payload(a.ssh_mib, state)
    for path in ("direct", "sallyport"):
        result = {}
        cat = threading.Thread(target=lambda: result.update(t=measure.ssh_cat(rig, path, payload)))
        before, t0 = snapshot(), time.monotonic()
        cat.start()
        perf = None
        if a.perf and path == "sallyport":
            time.sleep(0.5)
            perf = perf_record(gateway_pid, f"{a.perf}-ssh.data")
        cat.join()
        after, t1 = snapshot(), time.monotonic()
        if perf:
            perf.send_signal(signal.SIGINT)
            perf.wait()
        if "t" not in result:
            sys.exit(f"ssh cat via {path} failed")
        report(path, a.ssh_mib / result["t"], "MiB/s", before, after, t1 - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", required=True)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--ssh-mib", type=int, default=1024)
    ap.add_argument("--perf", metavar="PREFIX", help="record the gateway's profile with perf")
    a = ap.parse_args()
    if a.seconds < 10:
        ap.error("--seconds must be at least 10")
    state = Path(tempfile.mkdtemp(prefix="sp-cpu.", dir="/tmp"))
    rig = Rig(state, a.binary, gateways=("sallyport",))
    try:
        rig.start(10, pgbouncer=True)
        gateway_pid = rig.gateways["sallyport"].proc.pid
        pgbench_split(rig, a, gateway_pid)
        if a.ssh_mib > 0:
            ssh_split(rig, a, gateway_pid, state)
    finally:
        rig.stop()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
