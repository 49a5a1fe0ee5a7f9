#!/usr/bin/env python3
"""Turns a Google Benchmark JSON file into the Markdown table docs/benchmarks.md uses.

Usage: scripts/bench_table.py OUT.json [--counters FLOPS,ratio_to_dense,...] [--aggregate median]
Rows are the chosen aggregate of each benchmark (every run when the file has no aggregates);
time in ms (wall, then CPU); a FLOPS or bytes_per_second counter is shown in G/s.
"""
import argparse
import json


def fmt(name, value):
    rate = "FLOP" in name.upper() or name.endswith(("/s", "per_second", "_Bps"))
    if rate and abs(value) >= 1e7:  # a raw rate (FLOP/s, bytes/s): shown in G/s
        return f"{value / 1e9:.1f}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("json")
    ap.add_argument("--counters", default="", help="comma-separated counter names, in order")
    ap.add_argument("--aggregate", default="median")
    args = ap.parse_args()
    with open(args.json) as f:
        data = json.load(f)
    runs = data["benchmarks"]
    if any(r.get("run_type") == "aggregate" for r in runs):
        runs = [r for r in runs if r.get("aggregate_name") == args.aggregate]
    counters = [c for c in args.counters.split(",") if c]
    if not counters:
        skip = {"name", "run_name", "run_type", "repetitions", "repetition_index", "threads",
                "iterations", "real_time", "cpu_time", "time_unit", "family_index",
                "per_family_instance_index", "aggregate_name", "aggregate_unit", "label"}
        for r in runs:
            for k in r:
                if k not in skip and k not in counters:
                    counters.append(k)
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
    print("| benchmark | wall ms | CPU ms | " + " | ".join(counters) + " |")
    print("|---|---|---|" + "---|" * len(counters))
    for r in runs:
        s = scale[r.get("time_unit", "ns")]
        cells = [fmt(c, r[c]) if c in r else "" for c in counters]
        name = r.get("run_name", r["name"]).replace("/real_time", "").replace("/manual_time", "")
        print(f"| {name} | {r['real_time'] * s:.2f} | {r['cpu_time'] * s:.2f} | "
              + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
