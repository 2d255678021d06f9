"""The tables of scripts/bench.sh, from its JSON lines (one per run).

Usage: python3 scripts/py/bench_tables.py RESULTS.jsonl

Prints every round of the compared loads, then per load the median over the rounds with the
spread (min-max) and the ratios of the medians, then the raftlog-only runs (round 0).
"""

import json
import statistics
import sys

SYSTEMS = [
    ("raftlog", "stream", "raftlog ProduceStream"),
    ("raftlog", "unary", "raftlog unary Produce"),
    ("raftlog", "generated", "raftlog unary Produce, generated stub"),
    ("nats", "always", "NATS sync: always"),
    ("nats", "default", "NATS default sync"),
]


def label(system, setting, load=""):
    # A queue load's raftlog row is the queue (its producer is on a ProduceStream).
    if load.startswith("queue-") and system == "raftlog":
        return "raftlog queue"
    for s, t, name in SYSTEMS:
        if (s, t) == (system, setting):
            return name
    return f"{system} {setting}"


def medians_names(runs):
    return dict.fromkeys(r["name"] for r in runs)


def print_table(rows, right_from=2):
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) if j < right_from else c.rjust(w)
                        for j, (c, w) in enumerate(zip(row, widths))))


def ms(us):
    return f"{us / 1000:.2f}"


def main(path):
    runs = [json.loads(line) for line in open(path) if line.strip()]
    compared = [r for r in runs if r["round"] > 0]
    alone = [r for r in runs if r["round"] == 0]
    if compared:
        payload = compared[0]["result"].get("payload", "?")
        nats = next((r["result"]["nats"] for r in compared if r["system"] == "nats"), None)
        print()
        print(f"Closed loop, 1 record per request, payload {payload}; raftlog acks after fsync on a "
              f"majority; NATS {nats['server_version'] if nats else '-'}: R3 stream, file storage, "
              f"client on the stream leader.")
        print("\nEvery round:")
        table = [["round", "load", "system", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "peak RSS MiB"]]
        for r in sorted(compared, key=lambda r: (r["round"], r["name"], r["system"], r["setting"])):
            x = r["result"]
            lat = x["latency_us"]
            table.append([str(r["round"]), r["name"], label(r["system"], r["setting"], r["name"]),
                          f"{x['requests_per_s']:,.0f}", ms(lat["p50"]), ms(lat["p99"]),
                          ms(lat["p999"]), str(r["peak_rss_mb"])])
        print_table(table, right_from=3)

        print("\nMedians over the rounds (min-max):")
        table = [["load", "system", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "peak RSS MiB"]]
        medians = {}
        for name in dict.fromkeys(r["name"] for r in compared):
            for system, setting, _ in SYSTEMS:
                mine = [r for r in compared if (r["name"], r["system"], r["setting"]) == (name, system, setting)]
                if not mine:
                    continue
                rates = [r["result"]["requests_per_s"] for r in mine]
                med = statistics.median(rates)
                medians[(name, system, setting)] = med
                lat = lambda q: statistics.median(r["result"]["latency_us"][q] for r in mine)
                table.append([name, label(system, setting, name),
                              f"{med:,.0f} ({min(rates):,.0f}-{max(rates):,.0f})",
                              ms(lat("p50")), ms(lat("p99")), ms(lat("p999")),
                              str(max(r["peak_rss_mb"] for r in mine))])
        print_table(table)

        print("\nRatios of the medians (req/s):")
        table = [["load", "stream / NATS always", "unary / NATS always",
                  "generated / NATS always", "stream / NATS default", "unary / NATS default",
                  "unary / stream"]]
        for name in dict.fromkeys(r["name"] for r in compared):
            def ratio(a, b):
                x, y = medians.get((name,) + a), medians.get((name,) + b)
                return f"{x / y:.2f}" if x and y else "-"
            stream, unary = ("raftlog", "stream"), ("raftlog", "unary")
            generated = ("raftlog", "generated")
            always, default = ("nats", "always"), ("nats", "default")
            table.append([name, ratio(stream, always), ratio(unary, always),
                          ratio(generated, always), ratio(stream, default),
                          ratio(unary, default), ratio(unary, stream)])
        print_table(table, right_from=1)
        if any(name.startswith("queue-") for name in medians_names(compared)):
            print("(queue loads: \"stream\" is raftlog's queue, whatever its workers' transport)")

    if alone:
        print("\nraftlog alone:")
        by = {r["name"]: r for r in alone}
        for r in alone:
            x = r["result"]
            if "requests_per_s" in x and "latency_us" in x:
                print(f"  {r['name']} ({r['setting']}): {x['requests_per_s']:,.0f} req/s, "
                      f"{x['mb_per_s']:.1f} MB/s, p50 {ms(x['latency_us']['p50'])} ms, "
                      f"p99 {ms(x['latency_us']['p99'])} ms, peak RSS {r['peak_rss_mb']} MiB")
        p, c = by.get("producer-1KiB"), by.get("consume-1KiB")
        if p:
            p = p["result"]
            print(f"  batching producer, 1 KiB, {p['partitions']} partitions: {p['records']:,} records "
                  f"in {p['seconds']:.1f} s, {p['records_per_s']:,.0f} records/s, {p['mb_per_s']:.1f} MB/s")
        if c:
            c = c["result"]
            print(f"  catch-up consume from {c['endpoint']} ({c['node_role']}), {c['partitions']} "
                  f"partitions: {c['records']:,} records in {c['seconds']:.2f} s, "
                  f"{c['records_per_s']:,.0f} records/s, {c['mb_per_s']:.1f} MB/s")
        for mode in ("push", "pull"):
            e = by.get(f"e2e-{mode}")
            if e:
                e = e["result"]
                lat, ack = e["e2e_latency_us"], e["ack_latency_us"]
                print(f"  end to end, {e['rate']:,} records/s of {e['record_bytes']} B, consumer {mode} "
                      f"on {e['endpoint']}: send to receipt p50 {ms(lat['p50'])} ms, p99 "
                      f"{ms(lat['p99'])} ms (send to ack p50 {ms(ack['p50'])} ms, p99 {ms(ack['p99'])} ms)")


if __name__ == "__main__":
    main(sys.argv[1])
