#!/usr/bin/env python3
"""Where a write's time goes: the stage histograms of each node's /metrics, side by side.

    python3 scripts/py/stage_times.py [--json] [ADMIN_ADDR ...]   (default: the local cluster)

For each node (leader first) and each stage histogram it prints the count, the mean and the p50 /
p99 read off the buckets (the upper bound of the bucket holding that rank). The stages, in the
order a write passes them, are documented in docs/operations.md ("Metrics").
"""
import argparse
import json
import re
import sys
import urllib.request

# (histogram, label filter or None, short name) in the order a write meets them.
STAGES = [
    ("raftlog_group_commit_queue_seconds", None, "queue (leader)"),
    ("raftlog_group_commit_entry_seconds", None, "entry: propose->apply (leader)"),
    ("raftlog_replication_round_trip_seconds", "follower", "round trip to follower"),
    ("raftlog_follower_append_seconds", None, "follower: arrival->answer"),
    ("raftlog_log_fsync_wait_seconds", None, "fsync wait"),
    ("raftlog_log_fsync_duration_seconds", None, "fsync"),
    ("raftlog_apply_seconds", None, "apply"),
    ("raftlog_log_purge_seconds", None, "purge (core blocked)"),
]

LINE = re.compile(r'^(\w+?)(_bucket|_sum|_count)?(\{[^}]*\})? ([0-9.eE+-]+|\+Inf|NaN)$')
LABEL = re.compile(r'(\w+)="([^"]*)"')


def scrape(addr):
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
        text = r.read().decode()
    series = {}  # (name, frozenset(labels without le)) -> {"buckets": [(le, n)], "sum", "count"}
    leader = False
    for line in text.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        name, part, labels, value = m.groups()
        labels = dict(LABEL.findall(labels or ""))
        if name == "raftlog_raft_is_leader" and part is None:
            leader = value == "1"
            continue
        if part is None:
            continue
        le = labels.pop("le", None)
        s = series.setdefault((name, frozenset(labels.items())), {"buckets": []})
        if part == "_bucket":
            s["buckets"].append((float(le), float(value)))
        else:
            s[part[1:]] = float(value)
    return leader, series


def quantile(buckets, q):
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0
    if total == 0:
        return None
    for le, n in buckets:
        if n >= q * total:
            return le
    return None


def stage_rows(series):
    rows = []
    for name, by, short in STAGES:
        for (n, labels), s in sorted(series.items(), key=lambda kv: sorted(kv[0][1])):
            if n != name or not s.get("count"):
                continue
            labels = dict(labels)
            label = f"{short} {labels[by]}" if by and by in labels else short
            ms = lambda v: None if v is None else round(v * 1000, 3)
            rows.append({
                "stage": label,
                "count": int(s["count"]),
                "mean_ms": ms(s["sum"] / s["count"]),
                "p50_ms": ms(quantile(s["buckets"], 0.5)),
                "p99_ms": ms(quantile(s["buckets"], 0.99)),
            })
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("addrs", nargs="*", default=["127.0.0.1:9091", "127.0.0.1:9092", "127.0.0.1:9093"])
    ap.add_argument("--json", action="store_true", help="one JSON object per node")
    args = ap.parse_args()
    nodes = []
    for addr in args.addrs:
        try:
            leader, series = scrape(addr)
        except OSError as e:
            print(f"{addr}: {e}", file=sys.stderr)
            continue
        nodes.append({"node": addr, "leader": leader, "stages": stage_rows(series)})
    nodes.sort(key=lambda n: not n["leader"])
    if args.json:
        for n in nodes:
            print(json.dumps(n))
        return
    for n in nodes:
        print(f"{n['node']} ({'leader' if n['leader'] else 'follower'})")
        print(f"  {'stage':<36} {'count':>9} {'mean ms':>9} {'p50 ms':>8} {'p99 ms':>8}")
        for r in n["stages"]:
            f = lambda v: "-" if v is None else f"{v:g}"
            print(f"  {r['stage']:<36} {r['count']:>9} {f(r['mean_ms']):>9} {f(r['p50_ms']):>8} {f(r['p99_ms']):>8}")


if __name__ == "__main__":
    main()
