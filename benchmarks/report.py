"""Turn a pytest-benchmark JSON into the markdown table of docs/benchmarks.md.

Each group's first benchmark whose name contains "ptycho_fast" is compared with every
other benchmark of the group (ratio = baseline median / ours: > 1 means we are faster).

    python benchmarks/report.py .benchmarks/ops.json
"""

import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    with open(path) as f:
        run = json.load(f)
    groups = defaultdict(list)
    for bench in run["benchmarks"]:
        groups[bench["group"]].append(bench)
    machine = run.get("machine_info", {})
    print(f"Machine: {machine.get('cpu', {}).get('brand_raw', '?')}, "
          f"{machine.get('cpu', {}).get('count', '?')} cores; {run.get('datetime', '')}\n")
    print("| group | benchmark | median (ms) | min (ms) | baseline / ptycho_fast |")
    print("|---|---|---:|---:|---:|")
    for group, benches in groups.items():
        ours = next((b for b in benches if "ptycho_fast" in b["name"]), None)
        for b in benches:
            median, low = b["stats"]["median"] * 1e3, b["stats"]["min"] * 1e3
            ratio = "" if ours is None or b is ours else f"{b['stats']['median'] / ours['stats']['median']:.2f}x"
            name = b["name"].removeprefix("test_")
            print(f"| {group} | {name} | {median:.2f} | {low:.2f} | {ratio} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".benchmarks/ops.json")
