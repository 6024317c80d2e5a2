r"""Runs the 2-core CPU experiment of issue 6 and prints its results table (docs/RESULTS.md).

    python tools/cpu_ablation.py --root /tmp/jface-cpu                     # the paper's four variants, in order
    python tools/cpu_ablation.py --root /tmp/jface-cpu --variants cpu_base  # one of them
    python tools/cpu_ablation.py --root /tmp/jface-cpu --variants cpu_base_flm   # the extra base + FLM row
    python tools/cpu_ablation.py --root /tmp/jface-cpu --table_only         # just the table of what is done
    python tools/cpu_ablation.py --root /tmp/jface-cpu --table_only --ced docs/cpu_dev_ced.png   # + CED plot

For each variant ``V`` (``configs/2dasl.py:V``): ``python train.py --config configs/2dasl.py:V --workdir ROOT/V``
(resumes from ``ROOT/V`` when interrupted; a finished run is not retrained), then ``python evaluate.py
--checkpoint ROOT/V --data_dir DEV --dense_bases_dir DENSE --out ROOT/V/eval_dev`` on the final (latest)
checkpoint (``--which best``: the one the hold-out chose). The table reads ``ROOT/V/eval_dev/results.json`` (the
AFLW2000-3D protocol, 68 points, original GT: 2D NME per |yaw| bin, the mean of bins and overall; 3D NME overall
and mean of bins; with the dense bases, dense 3D and ICP reconstruction NME, mean of bins) and the training wall-clock (``elapsed_s`` of ``ROOT/V/results.json``:
all resumed pieces summed, compilation and dev evaluations included). Extra ``--config.*`` overrides after ``--``
go to every train.py call.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys

import numpy as np

VARIANTS = ("cpu_base", "cpu_cyc", "cpu_sc", "cpu")  # the paper's four, run by default
EXTRA = ("cpu_base_flm",)  # base + FLM input: run with --variants cpu_base_flm; in the table when present
LABELS = {"cpu_base": "base (RGB, L3d)", "cpu_cyc": "cyc (RGB+FLM, self-supervision)",
          "cpu_sc": "sc (RGB, self-critic)", "cpu": "cyc+sc (full 2DASL)", "cpu_base_flm": "base+FLM (RGB+FLM, L3d)"}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_variant(variant: str, root: str, dev_dir: str, overrides: list[str], dense_dir: str = "",
                which: str = "latest") -> None:
  workdir = os.path.join(root, variant)
  train = [sys.executable, "train.py", f"--config=configs/2dasl.py:{variant}", f"--workdir={workdir}", *overrides]
  print("$", " ".join(train[1:]), flush=True)
  subprocess.run(train, cwd=REPO, check=True)
  ev = [sys.executable, "evaluate.py", "--checkpoint", workdir, "--data_dir", dev_dir,
        "--out", os.path.join(workdir, "eval_dev")]
  if dense_dir:
    ev += ["--dense_bases_dir", dense_dir]
  if which != "latest":
    ev += ["--which", which]
  print("$", " ".join(ev[1:]), flush=True)
  subprocess.run(ev, cwd=REPO, check=True)


def table(root: str, variants=VARIANTS + EXTRA) -> str:
  """Markdown rows ``| variant | 2D bins | 2D mean of bins | 2D overall | 3D overall | 3D | dense 3D | ICP | steps |
  wall-clock |`` (3D, dense 3D, ICP: mean of bins; "—" when not evaluated)."""
  lines = ["| variant | [0,30] | (30,60] | (60,90] | mean of bins | overall | 3D overall | 3D | dense 3D | ICP | steps "
           "| wall-clock |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for v in variants:
    ev_path = os.path.join(root, v, "eval_dev", "results.json")
    tr_path = os.path.join(root, v, "results.json")
    if not os.path.exists(ev_path):
      continue
    res = json.load(open(ev_path))
    nme, nme3 = res["nme_2d_68"], res.get("nme_3d_68") or {}
    overall3 = f"{nme3['overall']:.2f}" if nme3.get("overall") is not None else "—"
    means = [(res.get(k) or {}).get("mean_of_bins") for k in ("nme_3d_68", "nme_dense_3d", "nme_icp")]
    shape = " | ".join("—" if m is None else f"{m:.3f}" for m in means)
    tr = json.load(open(tr_path)) if os.path.exists(tr_path) else {}
    mins = f"{tr['elapsed_s'] / 60:.0f} min" if "elapsed_s" in tr else "?"
    bins = " | ".join(f"{b:.3f}" for b in nme["bins"])
    lines.append(f"| `:{v}` {LABELS.get(v, '')} | {bins} | **{nme['mean_of_bins']:.3f}** | {nme['overall']:.3f} "
                 f"| {overall3} | {shape} | {tr.get('step', '?')} | {mins} |")
  return "\n".join(lines)


def anchor_errors(dev_dir: str, bfm_dir: str) -> dict:
  """Per-image 2D NME (%) on the dev split of the anchors: released 2DASL parameters and the FAN input landmarks."""
  from jface.eval import data as eval_data
  from jface.eval import protocol
  data = eval_data.load_aflw2000(dev_dir)
  face = eval_data.load_face(bfm_dir)
  released = np.load(os.path.join(dev_dir, "meta.npz"))["released_2dasl_params"]
  return {"released 2DASL": protocol.landmark_errors(data, protocol.landmarks_from_params(face, released))["nme_2d"],
          "FAN input landmarks": protocol.landmark_errors(data, np.asarray(data.detector, np.float64))["nme_2d"]}


def ced_plot(root: str, variants, dev_dir: str, bfm_dir: str, path: str) -> str:
  """One CED figure: every finished variant (its ``eval_dev/per_image.csv``) beside the anchors."""
  from jface.eval import report
  curves = anchor_errors(dev_dir, bfm_dir)
  for v in variants:
    f = os.path.join(root, v, "eval_dev", "per_image.csv")
    if os.path.exists(f):
      with open(f) as fh:
        curves[f":{v} {LABELS[v]}"] = [float(r["nme_2d"]) if r["status"] == "ok" else np.nan
                                       for r in csv.DictReader(fh)]
  return report.plot_ced(curves, path, title="AFLW2000-3D dev split (200 images), 68 points")


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  overrides = argv[argv.index("--") + 1:] if "--" in argv else []
  argv = argv[:argv.index("--")] if "--" in argv else argv
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--root", required=True, help="output folder; one workdir per variant")
  ap.add_argument("--variants", nargs="+", default=None, choices=VARIANTS + EXTRA,
                  help="variants to train and evaluate (default: the paper's four); the table shows every "
                  "finished one")
  ap.add_argument("--dev_dir", default=os.path.join(REPO, "..", "shared", "data", "aflw2000_3d_dev"))
  ap.add_argument("--bfm_dir", default=os.path.join(REPO, "..", "shared", "data", "3dmm"))
  ap.add_argument("--dense_bases_dir", default=os.path.join(REPO, "..", "shared", "data", "3dmm_dense"),
                  help="dense bases for the dense 3D / ICP columns (skipped when the folder is absent)")
  ap.add_argument("--which", default="latest", choices=("latest", "best"),
                  help="checkpoint to evaluate (best = by the hold-out, with --config.data.holdout=N)")
  ap.add_argument("--table_only", action="store_true")
  ap.add_argument("--ced", default="", help="also write a CED plot of the finished variants and the anchors here")
  args = ap.parse_args(argv)
  os.makedirs(args.root, exist_ok=True)
  if not args.table_only:
    if not os.path.isdir(args.dev_dir):
      print(f"error: missing dev split {args.dev_dir} (../shared/data/aflw2000_3d_dev; see ../shared/README.md)",
            file=sys.stderr)
      return 2
    for v in args.variants or VARIANTS:
      run_variant(v, args.root, args.dev_dir, overrides,
                  args.dense_bases_dir if os.path.isdir(args.dense_bases_dir) else "", args.which)
  out = table(args.root)
  print(out)
  with open(os.path.join(args.root, "table.md"), "w") as f:
    f.write(out + "\n")
  if args.ced:
    print("wrote", ced_plot(args.root, VARIANTS + EXTRA, args.dev_dir, args.bfm_dir, args.ced))
  return 0


if __name__ == "__main__":
  sys.exit(main())
