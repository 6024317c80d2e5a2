r"""Compares the ``metrics.jsonl`` of two training workdirs step by step (the behaviour check of a refactor).

  python tools/compare_metrics.py BEFORE_WORKDIR AFTER_WORKDIR [--ignore time,elapsed_s,lr] [--rtol 0]

Every (prefix, step) record of AFTER is matched with BEFORE's, and every numeric field outside ``--ignore`` that both
logged is compared. Prints the differing values (the first ``--show``), then one summary line:
``compared N values over R records: D differ, worst relative difference W (train: Wt, dev: Wd)``.
Exit status 0 when no train value differs by more than ``--rtol`` (relative), 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def read(workdir: str) -> dict:
  """{(prefix, step): record} of ``workdir/metrics.jsonl`` (a later line for the same key wins: resumed runs)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"missing {path}: expected a train.py workdir")
  out = {}
  with open(path) as f:
    for line in f:
      try:
        r = json.loads(line)
      except ValueError:
        continue  # a line cut short by a kill
      out[(r.get("prefix", "train"), int(r["step"]))] = r
  return out


def compare(before: dict, after: dict, ignore=("time", "elapsed_s", "lr")) -> dict:
  """-> dict(n, records, diffs [(key, field, a, b, rel)], worst {prefix: rel}, missing [keys])."""
  skip = set(ignore) | {"step", "prefix"}
  n, diffs, worst, missing = 0, [], {}, []
  for key in sorted(after):
    if key not in before:
      missing.append(key)
      continue
    for field, b in after[key].items():
      if field in skip or not isinstance(b, (int, float)):
        continue
      if field not in before[key]:
        continue  # a field the older run did not log
      a = before[key][field]
      n += 1
      if a != b:
        rel = abs(a - b) / max(abs(a), 1e-12)
        diffs.append((key, field, a, b, rel))
        worst[key[0]] = max(worst.get(key[0], 0.0), rel)
  return dict(n=n, records=len(after), diffs=diffs, worst=worst, missing=missing)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("before")
  ap.add_argument("after")
  ap.add_argument("--ignore", default="time,elapsed_s,lr", help="comma list of fields not compared")
  ap.add_argument("--rtol", type=float, default=0.0, help="allowed relative difference of train values")
  ap.add_argument("--show", type=int, default=10, help="differing values printed")
  args = ap.parse_args(argv)
  try:
    res = compare(read(args.before), read(args.after), tuple(args.ignore.split(",")))
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for (prefix, step), field, a, b, rel in res["diffs"][:args.show]:
    print(f"{prefix} step {step} {field}: {a!r} -> {b!r} (relative {rel:.2e})")
  if res["missing"]:
    print(f"{len(res['missing'])} records of {args.after} are not in {args.before}, e.g. {res['missing'][0]}")
  worst = max(res["worst"].values(), default=0.0)
  parts = ", ".join(f"{k}: {v:.2e}" for k, v in sorted(res["worst"].items()))
  print(f"compared {res['n']} values over {res['records']} records: {len(res['diffs'])} differ, worst relative "
        f"difference {worst:.2e}" + (f" ({parts})" if parts else ""))
  return 0 if res["worst"].get("train", 0.0) <= args.rtol else 1


if __name__ == "__main__":
  sys.exit(main())
