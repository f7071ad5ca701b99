"""Compares the TPC-H answers of two engines, query by query: the same rows in the same order
(rows whose ORDER BY keys tie may come in either order), numbers equal to 2 decimal places
relative to their size. Prints one line per query and exits non-zero if any differ.

usage: python3 compare.py WANT_DIR GOT_DIR [--skip-header]
"""
import csv
import sys


def cell(v):
    try:
        x = float(v)
    except ValueError:
        return v.strip()
    return round(x, 2) if abs(x) < 1e12 else float(f"{x:.12g}")


def rows(path, skip_header):
    with open(path, newline="") as f:
        r = list(csv.reader(f))
    if skip_header and r:
        r = r[1:]
    return [tuple(cell(c) for c in row) for row in r]


def same(a, b):
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            if u == v:
                continue
            if isinstance(u, float) and isinstance(v, float) and abs(u - v) <= max(0.011, 1e-9 * abs(u)):
                continue
            return False
    return True


def main():
    want_dir, got_dir = sys.argv[1], sys.argv[2]
    skip = "--skip-header" in sys.argv
    bad = 0
    for q in range(1, 23):
        try:
            want = rows(f"{want_dir}/q{q}.csv", False)
            got = rows(f"{got_dir}/q{q}.csv", skip)
        except FileNotFoundError as e:
            print(f"q{q} missing: {e}")
            bad += 1
            continue
        ok = same(want, got) or same(sorted(want, key=repr), sorted(got, key=repr))
        print(f"q{q} {'same' if ok else 'DIFFERENT'} ({len(got)} rows, want {len(want)})")
        bad += 0 if ok else 1
    sys.exit(1 if bad else 0)


main()
