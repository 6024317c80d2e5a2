r"""PGN training configs: ``python train.py --config configs/pgn.py[:VARIANT] --workdir DIR``.

PGN (Liu et al. 2020): a shared ResFCN encoder; the pose guidance network regresses the 68 landmarks as a UV
position map (``jface.methods.pgn.model``); identity / expression heads give the 3DMM shape and the pose is solved
in closed form from the landmarks (Eq. 3-4). ``stage = 0`` (every variant) trains the paper's three stages in
turn, each in ``DIR/stage<N>`` initialised from the previous one (``jface.training.train_stages``; re-running the
command resumes, finished stages are skipped; ``evaluate.py`` / ``predict`` / ``export`` on DIR load the final
stage):

1. encoder + PGN on 3D landmarks (``data.train_3d``) and 2D landmarks (``data.train_2d``, optional);
2. the identity / expression heads on single images with Ll (Eq. 8) + Lr (Eq. 12), encoder and PGN frozen;
3. the heads on groups of ``group_size`` frames of one person (``data.train_mf``) with Ll + Lr + the
   ``mf_losses`` terms (Lp census Eq. 9 / "lp-" plain L1, Lf flow Eq. 10, Ls features Eq. 11), identity fused
   over the frames. ``--config.stage=N --config.init_from=PREV_STAGE_DIR`` trains one stage alone.

Each stage's ``num_steps``, ``batch_size`` (stage 3: frames, a multiple of ``group_size``) and
``learning_rate`` are in ``config.stage<N>``; the rest is shared.

Variants (``get_config(arg)``):

* (default) -- the paper's settings (Sec. 4) where we have them: ResFCN at full width, 256 x 256, Adam 1e-4 halved
  every 100k steps, stage 1 600k steps at batch 16 (+ 16 2D-only), stage 2 400k at 16, stage 3 400k at 4 frames
  in pairs, lambdas l=1, p=0.2, f=0.2, s=10, r=1. Data: ``tfds:the300w_lp``, a 2D-only in-the-wild set
  (``--config.data.train_2d=folder:IMAGES:LANDMARKS``) and real clips (``clips:DIR:2``, 300-VW style; the
  default path is a placeholder). Not run here (no 300W-LP, no clips, no GPU): no measured result.
* ``:smoke`` -- the embedded default: synthetic faces (``synthetic:1024:0``; 2D-only ``synthetic2d:512:7``;
  groups ``synthetic_groups:256:2:3``: the same synthetic identity under other poses, expressions and lights),
  64 x 64, width 1/4, stages of 500 / 300 / 100 steps; no download.
  Command: ``python train.py --config configs/pgn.py:smoke --workdir /tmp/jface-pgn-smoke``.
  Measured (2026-12-02, 2-core CPU beside a PRNet training run, load 4-8): 6 min 29 s (stages 218 / 55 / 111 s);
  dev (64 synthetic faces) 2D NME mean of bins 12.364 from the PGN's landmarks after stage 1, 12.397 from the
  3DMM after stage 3 (mean face 15.757); ``evaluate.py --checkpoint DIR --icp_stride 10``: 3D 17.74 (mean face
  38.75), dense 2D 10.75 (16.53), dense 3D 15.69 (25.09), ICP 4.02 (7.96). Unlike PRNet's map, the 3DMM holds the
  whole head, so its dense metrics beat the mean face's.
* ``:cpu`` -- the 2-core-CPU scale on ``../shared/data``: 3D labels from 700 ``aflw2000_3d_train`` crops (100 held
  out for checkpoint selection) plus the wild crops' pseudo-3D fits (``WILD_FITS``, as PRNet's ``:cpu``), 2D-only
  stream = the 10k ``aflw_wild`` crops (21 visible points, batch 8), stage-3 groups = two profiled views of one
  train photo (``PROFILED``), dev ``aflw2000_3d_dev``, 128 x 128, width 1/4, stages of 3000 / 800 / 200 steps
  (Adam 3e-3 / 1e-3 / 3e-4, each falling 10x). Command: ``python train.py --config configs/pgn.py:cpu --workdir W``,
  then ``python evaluate.py --dataset aflw2000_3d --data_dir ../shared/data/aflw2000_3d_dev --checkpoint W
  --dense_bases_dir ../shared/data/3dmm_dense --out W/eval_dev``. Measured (2026-12-02, 2-core CPU shared with a
  PRNet run, load 4-8; stages 74 min 43 s / 3 min 05 s / 4 min 02 s): dev 2D NME mean of bins **7.836** (5.792 /
  7.387 / 10.328; the PGN's own landmarks after stage 1: 8.562), 3D 12.381, dense 2D 7.966, dense 3D 11.271, ICP
  2.670 (docs/RESULTS.md, "PGN"). Stage 3 changed nothing measurable (hold-out 9.318 before and after).

Any field can be overridden on the command line, e.g. ``--config.stage1.num_steps=1000``.
"""
from __future__ import annotations

import ml_collections

VARIANTS = ("default", "smoke", "cpu")
SHARED = "../shared/data"
# :cpu's made data (README): the wild crops' pseudo-3D fits (python -m jface.data.fit_labels, as configs/prnet.py's
# WILD_FITS) and the profiled views of the train photos (python -m jface.data.profiling --data
# crops:../shared/data/aflw2000_3d_train --out PROFILED), grouped two views of one photo at a time in stage 3.
WILD_FITS = "~/.cache/jface/wild_fits"
PROFILED = "~/.cache/jface/profiled_train"


def _stage(num_steps: int, batch_size: int, learning_rate: float) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"num_steps": num_steps, "batch_size": batch_size,
                                    "learning_rate": learning_rate})


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of configs/pgn.py; choose one of {', '.join(VARIANTS)}")
  c = ml_collections.ConfigDict()
  c.method = "pgn"
  c.variant = variant
  c.seed = 0
  c.stage = 0  # 0: stages 1, 2, 3 in turn (DIR/stage<N>); 1-3: that stage alone (with init_from)
  c.bfm_dir = f"{SHARED}/3dmm"
  c.dense_bases_dir = f"{SHARED}/3dmm_dense"
  c.prnet_uv_dir = f"{SHARED}/prnet_uv"
  c.init_from = ""

  c.model = "pgn"  # the network (jface.methods.pgn.model.PGNNet; logged by evaluate.py)
  c.image_size = 256
  c.dtype = "float32"
  c.model_kwargs = {"width_mult": 1.0, "landmark_head": "uv"}  # jface.methods.pgn.model.PGNNet fields
  c.predict_landmarks = "auto"  # "pgn" (X_UV), "3dmm" (the params' landmarks); auto: pgn after stage 1 only
  c.pose_reg = 1e-4  # ridge of the closed-form pose solve (pose.solve_affine)
  c.group_size = 2  # frames per person in stage 3
  c.mf_losses = "lp,lf,ls"  # stage-3 terms: lp (census) or lp- (L1), lf (flow), ls (features); "none"
  c.lambdas = {"l2d": 1.0, "ll": 1.0, "lr": 1.0, "lp": 0.2, "lp_minus": 0.2, "lf": 0.2, "ls": 10.0}
  c.flow = {"levels": 3, "iters": 2, "window": 7}  # jface.methods.pgn.flow.lucas_kanade

  c.data = ml_collections.ConfigDict()
  c.data.train_3d = "tfds:the300w_lp"
  c.data.train_2d = ""
  c.data.train_mf = "clips:300vw_clips:2"
  c.data.dev = f"crops:{SHARED}/aflw2000_3d_dev"
  c.data.dev_size = 0
  c.data.holdout = 0
  c.data.extra_3d = ""
  c.data.num_threads = 2
  c.data.augment = True
  c.data.landmark_noise_px = 0.0

  c.stage1 = _stage(600_000, 16, 1e-4)
  c.stage2 = _stage(400_000, 16, 1e-4)
  c.stage3 = _stage(400_000, 4, 1e-4)
  c.batch_size = 16  # (set per stage from stage<N>.batch_size)
  c.batch_size_2d = 16
  c.num_steps = 600_000  # (set per stage from stage<N>.num_steps)
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-4
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.decay_rate = 0.5
  c.optimizer.decay_steps = 100_000
  c.optimizer.staircase = True
  c.optimizer.weight_decay = 0.0
  c.optimizer.grad_clip = 0.0

  c.log_every = 100
  c.eval_every = 5000
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.num_devices = 0
  c.distributed = False
  c.tensorboard = True

  if variant == "smoke":
    c.bfm_dir = "synthetic"
    c.dense_bases_dir = ""
    c.prnet_uv_dir = ""
    c.image_size = 64
    c.model_kwargs = {"width_mult": 0.25, "landmark_head": "uv", "bn_momentum": 0.9, "head_features": 32}
    c.data.train_3d = "synthetic:1024:0"
    c.data.train_2d = "synthetic2d:512:7"
    c.data.train_mf = "synthetic_groups:256:2:3"
    c.data.dev = "synthetic:64:12345"
    c.data.augment = False
    c.batch_size_2d = 8
    c.stage1 = _stage(500, 16, 2e-3)
    c.stage2 = _stage(300, 16, 1e-3)
    c.stage3 = _stage(100, 8, 3e-4)
    c.optimizer.decay_rate = 0.1
    c.optimizer.decay_steps = 0  # = num_steps: 10x over each stage
    c.optimizer.staircase = False
    c.log_every = 50
    c.eval_every = 100
    c.checkpoint_every = 100
  if variant == "cpu":
    import os
    c.image_size = 128
    c.model_kwargs = {"width_mult": 0.25, "landmark_head": "uv", "bn_momentum": 0.9, "head_features": 64}
    c.data.train_3d = f"crops:{SHARED}/aflw2000_3d_train"
    c.data.extra_3d = f"fitted:{os.path.expanduser(WILD_FITS)}:3"
    c.data.holdout = 100  # checkpoints chosen on 100 train images, never on dev
    c.data.train_2d = f"aflw_wild:{SHARED}/aflw_wild"
    c.data.train_mf = f"groups:2:crops:{os.path.expanduser(PROFILED)}"
    c.batch_size_2d = 8
    c.stage1 = _stage(3000, 16, 3e-3)
    c.stage2 = _stage(800, 16, 1e-3)
    c.stage3 = _stage(200, 8, 3e-4)
    c.optimizer.decay_rate = 0.1
    c.optimizer.decay_steps = 0
    c.optimizer.staircase = False
    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 250
  return c
