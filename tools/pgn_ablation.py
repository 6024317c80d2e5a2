r"""PGN's multi-frame ablation (issue 15; the paper's Fig. 5a): stage 3 with none / Lp / Lp+Lf / Lp+Ls / all,
each from the same stage-2 workdir at equal steps, scored by 3D reconstruction error.

    python tools/pgn_ablation.py --config configs/pgn.py:smoke --stage2 SMOKE_DIR/stage2 --root ABL \
        --steps 300 --eval "--dataset synthetic --num 64 --seed 4242"          # held-out synthetic identities
    python tools/pgn_ablation.py --config configs/pgn.py:cpu --stage2 CPU_DIR/stage2 --root ABL_DEV \
        --steps 300 --eval "--data_dir ../shared/data/aflw2000_3d_dev --dense_bases_dir ../shared/data/3dmm_dense"
    python tools/pgn_ablation.py ... --table_only

For each variant ``T`` (``--variants``, default all five): ``python train.py --config CONFIG --config.stage=3
--config.init_from=STAGE2 --config.mf_losses=T --config.num_steps=STEPS --config.batch_size=B
--config.optimizer.learning_rate=LR --workdir ROOT/T`` (resumes when interrupted; a finished run is not
retrained; B and LR default to the config's ``stage3`` fields), then ``python evaluate.py --checkpoint ROOT/T
EVAL --out ROOT/T/eval`` (skipped when ``ROOT/T/eval/results.json`` exists). The table reads each
``results.json``: dense 3D NME and ICP reconstruction NME (the face's 3D shape), 68-point 3D and 2D NME (mean of
yaw bins), and the training wall-clock. Extra ``--config.*`` overrides after ``--`` go to every train.py call.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys

VARIANTS = ("none", "lp", "lp,lf", "lp,ls", "lp,lf,ls")
LABELS = {"none": "none (Ll + Lr, identity fusion)", "lp": "Lp (census)", "lp,lf": "Lp + Lf", "lp,ls": "Lp + Ls",
          "lp,lf,ls": "all (Lp + Lf + Ls)", "lp-": "Lp- (plain L1)"}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dir(root: str, variant: str) -> str:
  return os.path.join(root, variant.replace(",", "+"))


def run_variant(args, variant: str, overrides: list[str]) -> None:
  workdir = _dir(args.root, variant)
  train = [sys.executable, "train.py", f"--config={args.config}", "--config.stage=3",
           f"--config.init_from={args.stage2}", f"--config.mf_losses={variant}", f"--config.num_steps={args.steps}",
           f"--workdir={workdir}"]
  if args.batch_size:
    train.append(f"--config.batch_size={args.batch_size}")
  if args.lr:
    train.append(f"--config.optimizer.learning_rate={args.lr}")
  print("$", " ".join(train[1:] + overrides), flush=True)
  subprocess.run(train + overrides, cwd=REPO, check=True)
  out = os.path.join(workdir, "eval")
  if not os.path.isfile(os.path.join(out, "results.json")):
    ev = [sys.executable, "evaluate.py", "--checkpoint", workdir, *shlex.split(args.eval), "--out", out]
    print("$", " ".join(ev[1:]), flush=True)
    subprocess.run(ev, cwd=REPO, check=True)


def _metric(doc: dict, key: str) -> float:
  v = doc.get(key)
  if isinstance(v, dict):
    v = v.get("mean_of_bins", v.get("overall"))
  return float("nan") if v is None else float(v)


def table(root: str, variants) -> str:
  rows = ["| stage 3 terms | dense 3D NME | ICP NME | 68-pt 3D NME | 2D NME (mean of bins) | train s |",
          "|---|---|---|---|---|---|"]
  for v in variants:
    path = os.path.join(_dir(root, v), "eval", "results.json")
    if not os.path.isfile(path):
      continue
    doc = json.load(open(path))
    train = json.load(open(os.path.join(_dir(root, v), "results.json")))
    rows.append(f"| {LABELS.get(v, v)} | {_metric(doc, 'nme_dense_3d'):.3f} | {_metric(doc, 'nme_icp'):.3f} | "
                f"{_metric(doc, 'nme_3d_68'):.3f} | {_metric(doc, 'nme_2d_68'):.3f} | {train.get('elapsed_s', 0):.0f} |")
  return "\n".join(rows)


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  overrides = argv[argv.index("--") + 1:] if "--" in argv else []
  argv = argv[:argv.index("--")] if "--" in argv else argv
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", default="configs/pgn.py:smoke")
  ap.add_argument("--stage2", help="the stage-2 workdir every variant starts from")
  ap.add_argument("--root", required=True, help="output folder (one workdir per variant)")
  ap.add_argument("--steps", type=int, default=300)
  ap.add_argument("--batch_size", type=int, default=0, help="frames per step (default: the config's stage3)")
  ap.add_argument("--lr", type=float, default=0.0, help="Adam learning rate (default: the config's stage3)")
  ap.add_argument("--eval", default="--dataset synthetic --num 64 --seed 4242", help="evaluate.py arguments")
  ap.add_argument("--variants", default=",".join(v.replace(",", "+") for v in VARIANTS),
                  help="comma list of variants, terms joined by '+' (e.g. none,lp,lp+lf)")
  ap.add_argument("--table_only", action="store_true")
  args = ap.parse_args(argv)
  variants = [v.replace("+", ",") for v in args.variants.split(",") if v]
  if not args.table_only:
    if not args.stage2:
      ap.error("--stage2 is required unless --table_only")
    from jface.configs import load
    cfg = load(args.config)
    args.batch_size = args.batch_size or cfg.stage3.batch_size
    args.lr = args.lr or cfg.stage3.learning_rate
    for v in variants:
      run_variant(args, v, overrides)
  print(table(args.root, variants))


if __name__ == "__main__":
  main()
