"""Writes one metric of a Stratus feature table as `series,timestamp,value` CSV, the input of
`stratus evaluate forecast` (one series per resource): the newest revision of each window.

Usage: export_series.py --table URI --metric CPUUtilization --column mean --out FILE.csv
"""

import argparse
import csv
import os

from deltalake import DeltaTable


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--table", required=True)
    p.add_argument("--metric", default="CPUUtilization")
    p.add_argument("--column", default="mean")
    p.add_argument("--time", default="window_end")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    options = {k: v for k, v in os.environ.items() if k.startswith("AWS_")} if "://" in a.table else None
    data = DeltaTable(a.table, storage_options=options).to_pyarrow_table(
        columns=["resource_id", "metric", a.time, a.column, "revision"]
    )
    newest = {}
    for r, m, t, v, rev in zip(*(data.column(c).to_pylist() for c in ["resource_id", "metric", a.time, a.column, "revision"])):
        if m != a.metric or v is None:
            continue
        key = (r, t)
        if key not in newest or rev > newest[key][0]:
            newest[key] = (rev, v)
    with open(a.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["series", "timestamp", "value"])
        for (r, t), (_, v) in sorted(newest.items()):
            w.writerow([r, t.isoformat(), repr(float(v))])
    print(f"{len(newest)} {a.metric} {a.column} values of {len({r for r, _ in newest})} series in {a.out}")


if __name__ == "__main__":
    main()
