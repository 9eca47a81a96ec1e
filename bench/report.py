"""The benchmark report: a Markdown table (targets marked met / NOT met), the machine and
versions it ran on, and a PNG chart of the ratios to direct."""

import os
import platform
import re
import subprocess
from pathlib import Path

from rig import PGBIN, REPO

COLUMNS = ("direct", "pgbouncer", "sallyport", "sallyport-norec")
COLOURS = {"direct": "tab:gray", "pgbouncer": "tab:blue", "sallyport": "tab:orange",
           "sallyport-norec": "tab:green"}


def first_line(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    return ((r.stdout or r.stderr).strip().splitlines() or ["?"])[0]


def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        m = re.search(r"model name\s*:\s*(.+)", f.read())
        cpu = m.group(1) if m else cpu
    with open("/proc/meminfo") as f:
        kib = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1))
    return f"{cpu}, {os.cpu_count()} cores, {kib / (1 << 20):.0f} GiB RAM, " \
           f"Linux {platform.release()}"


def versions():
    rev = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain",
                            "--untracked-files=no"], capture_output=True, text=True).stdout
    return ", ".join([
        f"sallyport {rev}{' (uncommitted changes)' if dirty.strip() else ''}",
        first_line([str(PGBIN / "postgres"), "--version"]),
        first_line(["pgbouncer", "--version"]),
        first_line(["ssh", "-V"]).split(",")[0],
    ])


def target_met(row):
    """True / False when the row has a target, None when it has none."""
    v = row.values
    s = v.get("sallyport")
    if not row.kind or s is None:
        return None
    if row.kind == "max":
        return s <= row.limit
    d = v.get("direct")
    if not d:
        return None
    if row.kind == "added":
        return s - d <= row.limit
    ok = s / d >= row.limit
    if row.kind == "ratio+pgbouncer":
        ok = ok and s > v.get("pgbouncer", float("inf"))
    return ok


def num(x):
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.1f}" if abs(x) >= 1 else f"{x:.3f}"


def ratio(a, b):
    return "-" if a is None or not b else f"{a / b:.2f}"


def table_line(row):
    v = row.values
    d, b, s, n = (v.get(c) for c in COLUMNS)
    met = target_met(row)
    verdict = "-" if met is None else ("met" if met else "**NOT met**")
    target = row.target
    if row.kind == "added" and s is not None and d is not None:
        target += f" (+{s - d:.0f} µs)"
    note = f" {row.note}" if row.note else ""
    return (f"| {row.name} | {row.unit} | {num(d)} | {num(b)} | {num(s)} | {num(n)} | "
            f"{ratio(s, d)} | {ratio(n, d)} | {ratio(s, b)} | {target or '-'} | {verdict} |"
            f"{note} |")


def markdown(rows, stamp, command, seconds):
    head = [
        f"### {stamp} UTC",
        "",
        f"- machine: {machine()}",
        f"- versions: {versions()}",
        f"- command: `{command}` ({seconds / 60:.1f} minutes)",
        "- paths: direct = PostgreSQL 15 / OpenSSH sshd; pgbouncer = session mode; "
        "sallyport = recording every session; sallyport-norec = the same gateway with "
        "recording failing by design (recording = best_effort, no recordings directory). "
        "TLS on every leg that has it.",
        "",
        "| measure | unit | direct | pgbouncer | sallyport | sallyport-norec | "
        "sallyport/direct | norec/direct | sallyport/pgbouncer | target | met | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    return "\n".join(head + [table_line(r) for r in rows]) + "\n"


RESULTS_HEAD = """# Benchmark results

Written by `./bench/run.sh` (see bench/README.md); every run appends its table, newest last,
so a regression shows against the rows above it. Ratios are to the direct connection.
"""


def write(rows, stamp, command, seconds, append):
    """bench/results/STAMP.md and .png; the table is appended to bench/RESULTS.md when
    `append` (not for --quick runs, whose figures are not the real ones)."""
    text = markdown(rows, stamp, command, seconds)
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"{stamp}.md").write_text(text)
    chart(rows, out / f"{stamp}.png", stamp)
    if append:
        results = REPO / "bench" / "RESULTS.md"
        if not results.exists():
            results.write_text(RESULTS_HEAD)
        with open(results, "a") as f:
            f.write("\n" + text)
    return text, out / f"{stamp}.md", out / f"{stamp}.png"


def chart(rows, path, stamp):
    """Throughput figures as ratios to direct (higher is better) with each target marked,
    and the 1-client latencies."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    thr = [r for r in rows if r.unit in ("TPS", "MiB/s") and r.values.get("direct")]
    lat = [r for r in rows if r.unit == "µs"]
    fig, axes = plt.subplots(1, 2 if lat else 1, figsize=(15, 6), squeeze=False,
                             gridspec_kw={"width_ratios": [4, 1] if lat else [1]})
    ax = axes[0][0]
    width = 0.27
    for i, p in enumerate(COLUMNS[1:]):
        ys = [r.values[p] / r.values["direct"] if p in r.values else 0 for r in thr]
        ax.bar([x + (i - 1) * width for x in range(len(thr))], ys, width, label=p,
               color=COLOURS[p])
    for x, r in enumerate(thr):
        if r.kind.startswith("ratio"):
            ax.hlines(r.limit, x - 1.5 * width, x + 1.5 * width, colors="red", linewidth=2)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(thr)))
    ax.set_xticklabels([r.name.replace("pgbench ", "").replace(" (connection per transaction)",
                                                               "") for r in thr],
                       rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("ratio to direct (red: target)")
    ax.set_title(f"sallyport benchmarks {stamp} UTC: throughput relative to direct")
    ax.legend(fontsize=8)
    if lat:
        latency_panel(axes[0][1], lat)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def latency_panel(ax2, lat):
    for i, p in enumerate(COLUMNS):
        ax2.bar([x + (i - 1.5) * 0.2 for x in range(len(lat))],
                [r.values.get(p, 0) for r in lat], 0.2, label=p, color=COLOURS[p])
    ax2.set_xticks(range(len(lat)))
    ax2.set_xticklabels(["p50", "p99"][:len(lat)])
    ax2.set_ylabel("µs per transaction, 1 client")
    ax2.set_title("pgbench -S latency")
    ax2.legend(fontsize=7)
