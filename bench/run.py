"""sallyport benchmarks: every figure of issue 5 side by side, in one run, as a ratio to direct.

Run through ./bench/run.sh (it installs what is missing and builds a Release binary).
The rig (bench/rig.py) starts PostgreSQL, pgbouncer, an sshd and two gateways (recording on
and off); the benchmarks (bench/measure.py) run in this order:

  1. gateway RSS with N idle sessions (first, on a fresh gateway);
  2. pgbench -S, simple and prepared, 1/8/32 clients; latency p50/p99 at 1 client;
  3. pgbench -S -C (a connection per transaction);
  4. COPY out and in;
  5. SSH cat, scp upload, scp download;
  6. recording size against traffic, and the recorder's CPU share.

Writes bench/results/<stamp>.md and .png and appends the table to bench/RESULTS.md (not with
--quick).
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import measure
import report
from rig import REPO, Rig

GROUPS = ("idle", "select", "connect", "copy", "ssh", "recording")
QUICK = {"seconds": 5, "scale": 1, "copy_mib": 32, "ssh_mib": 32, "idle": 100}


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="bench/run.sh", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=15, help="per pgbench measurement (15)")
    ap.add_argument("--scale", type=int, default=10, help="pgbench scale factor (10)")
    ap.add_argument("--copy-mib", type=int, default=1024, help="COPY size each way (1024)")
    ap.add_argument("--ssh-mib", type=int, default=1024, help="SSH cat/scp size (1024)")
    ap.add_argument("--idle", type=int, default=1000, help="idle sessions for RSS (1000)")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: " + ", ".join(f"--{k.replace('_', '-')} {v}"
                                                      for k, v in QUICK.items())
                    + "; explicit options win; does not append to RESULTS.md")
    ap.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    ap.add_argument("--only", default=",".join(GROUPS),
                    help=f"comma-separated groups to run (default all: {','.join(GROUPS)}); "
                         "implies --no-append")
    ap.add_argument("--binary", default=os.environ.get("SALLYPORT_BIN",
                                                       str(REPO / "build" / "sallyport")))
    given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in argv if a.startswith("--")}
    a = ap.parse_args(argv)
    a.only = a.only.split(",")
    unknown = set(a.only) - set(GROUPS)
    if unknown:
        ap.error(f"--only: unknown group(s) {', '.join(sorted(unknown))}")
    if len(a.only) < len(GROUPS):
        a.no_append = True
    if a.quick:
        for k, v in QUICK.items():
            if k not in given:
                setattr(a, k, v)
    return a


def run_all(rig, a, state):
    """The benchmark groups in order; a group that fails leaves a row saying so and the run
    goes on. Returns (rows, failed group names)."""
    usage = {}
    steps = {
        "idle": lambda: measure.bench_idle_sessions(rig, a.idle),
        "select": lambda: measure.bench_select(rig, a.seconds, usage),
        "connect": lambda: measure.bench_connect(rig, a.seconds),
        "copy": lambda: measure.bench_copy(rig, a.copy_mib, state, usage),
        "ssh": lambda: measure.bench_ssh(rig, a.ssh_mib, state, usage),
        "recording": lambda: measure.recording_rows(rig, usage),
    }
    rows, failed = {}, []
    for name in GROUPS:
        if name not in a.only:
            continue
        print(f"{name}", flush=True)
        try:
            rows[name] = steps[name]()
        except Exception as e:  # reported in the table; the other groups still run
            print(f"  {name} FAILED: {e}", flush=True)
            failed.append(name)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            rows[name] = [measure.Row(f"{name} benchmarks", "-", {}, note=f"FAILED: {first}")]
    # The idle-session row reads best next to the other figures, at the end.
    order = [g for g in GROUPS if g != "idle"] + ["idle"]
    return [r for g in order for r in rows.get(g, [])], failed


def main(argv):
    a = parse_args(argv)
    started = time.monotonic()
    stamp = time.strftime("%Y%m%d-%H%M", time.gmtime())
    state = Path(tempfile.mkdtemp(prefix="sp-bench.", dir="/tmp"))
    rig = Rig(state, a.binary)
    ok = False
    try:
        print(f"starting the rig in {state}", flush=True)
        rig.start(a.scale)
        rows, failed = run_all(rig, a, state)
        ok = not failed
    finally:
        rig.stop()
        if ok:
            shutil.rmtree(state, ignore_errors=True)
        else:
            print(f"logs kept in {state}", file=sys.stderr)
    command = " ".join(["./bench/run.sh", *argv])
    text, md, png = report.write(rows, stamp, command, time.monotonic() - started,
                                 append=not (a.quick or a.no_append))
    print(text)
    print(f"wrote {md.relative_to(REPO)} and {png.relative_to(REPO)}"
          + ("" if a.quick or a.no_append else "; appended to bench/RESULTS.md"))
    if failed:
        print(f"FAILED: {', '.join(failed)} (logs kept in {state})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
