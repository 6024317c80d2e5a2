"""2DASL's own pieces: the landmark-map input (FLM) against a numpy reference, the network input, and the
self-critic pair (encoder, critic)."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jface import models as M
from jface.methods.twodasl.critic import Critic, Encoder
from jface.methods.twodasl.flm import landmark_map, network_input

X120 = jax.ShapeDtypeStruct((2, 120, 120, 4), jnp.float32)


def key(i: int = 0):
  return jax.random.key(i)


def abstract_init(model, *inputs, **kw):
  return jax.eval_shape(lambda *x: model.init(key(0), *x, **kw), *inputs)


def abstract_apply(model, variables, *inputs, **kw):
  return jax.eval_shape(lambda v, *x: model.apply(v, *x, **kw), variables, *inputs)


def landmark_map_reference(pts: np.ndarray, size: int, mask: np.ndarray) -> np.ndarray:
  """numpy reference of the FLM: +1 at [round(y) - 1, round(x) - 1] of each finite, unmasked, in-crop point."""
  out = -np.ones(pts.shape[:-2] + (size, size), np.float32)
  for idx in np.ndindex(pts.shape[:-2]):
    for (x, y), m in zip(pts[idx], mask[idx]):
      if not (m and np.isfinite(x) and np.isfinite(y)):
        continue
      c, r = int(np.round(np.float32(x))) - 1, int(np.round(np.float32(y))) - 1
      if 0 <= c < size and 0 <= r < size:
        out[idx + (r, c)] = 1.0
  return out


def test_landmark_map_closed_form():
  pts = jnp.asarray([[[1.0, 1.0], [120.0, 120.0], [60.4, 30.6], [0.2, 5.0], [np.nan, 3.0], [10.0, 10.0]]])
  mask = jnp.asarray([[True, True, True, True, True, False]])
  m = landmark_map(pts, 120, mask)
  chex.assert_shape(m, (1, 120, 120))
  chex.assert_type(m, jnp.float32)
  want = -np.ones((120, 120), np.float32)
  want[0, 0] = want[119, 119] = want[30, 59] = 1  # (x, y) -> [round(y) - 1, round(x) - 1]
  np.testing.assert_array_equal(m[0], want)  # out-of-crop, NaN and masked points are not drawn


def test_landmark_map_batched_vs_numpy():
  rng = np.random.default_rng(5)
  pts = rng.uniform(-5, 125, size=(2, 3, 68, 2)).astype(np.float32)
  m = np.asarray(jax.jit(landmark_map)(jnp.asarray(pts)))
  chex.assert_shape(m, (2, 3, 120, 120))
  for b in np.ndindex(2, 3):
    ref = -np.ones((120, 120), np.float32)
    for x, y in pts[b]:
      c, r = int(np.round(x)) - 1, int(np.round(y)) - 1
      if 0 <= c < 120 and 0 <= r < 120:
        ref[r, c] = 1
    np.testing.assert_array_equal(m[b], ref)




def test_landmark_map_matches_reference_with_ties_and_bad_points():
  rng = np.random.default_rng(0)
  pts = rng.uniform(-5, 126, size=(4, 68, 2)).astype(np.float32)
  pts[0, :10] = np.round(pts[0, :10]) + 0.5  # ties: round half to even
  pts[1, :3] = [[np.nan, 3], [np.inf, 5], [0.5, 0.5]]
  pts[2, :3] = [[1e12, 5], [120.49, 120.5], [0.51, 1.49]]
  mask = rng.random((4, 68)) > 0.2
  np.testing.assert_array_equal(np.asarray(landmark_map(jnp.asarray(pts), 120, jnp.asarray(mask))),
                                landmark_map_reference(pts, 120, mask))
  chex.assert_shape(landmark_map(jnp.asarray(pts.reshape(2, 2, 68, 2)), 32), (2, 2, 32, 32))


def test_network_input():
  rng = np.random.default_rng(1)
  batch = {"image": rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8),
           "flm_landmarks": rng.uniform(1, 32, (3, 68, 2)).astype(np.float32),
           "landmarks_mask": rng.random((3, 68)) > 0.3}
  x = network_input(jax.tree_util.tree_map(jnp.asarray, batch), use_flm=True)
  chex.assert_shape(x, (3, 32, 32, 4))
  chex.assert_type(x, jnp.float32)
  np.testing.assert_allclose(x[..., :3], (batch["image"].astype(np.float32) - 127.5) / 128, atol=1e-6)
  np.testing.assert_array_equal(x[..., 3], landmark_map_reference(batch["flm_landmarks"], 32,
                                                                  batch["landmarks_mask"]))
  chex.assert_shape(network_input(jax.tree_util.tree_map(jnp.asarray, batch), use_flm=False), (3, 32, 32, 3))


# ------------------------------------------------------------------------------ encoder, critic

def test_encoder_and_critic_shapes_counts():
  enc = Encoder()
  ve = abstract_init(enc, X120)
  z = abstract_apply(enc, ve, X120)
  chex.assert_shape(z, (2, 512))
  ch = (3, 32, 64, 128, 256, 256, 512)
  assert M.count_params(ve) == sum(9 * a * b + b for a, b in zip(ch[:-1], ch[1:]))
  critic = Critic()
  p = jax.ShapeDtypeStruct((2, 62), jnp.float32)
  vc = abstract_init(critic, z, p)
  chex.assert_shape(abstract_apply(critic, vc, z, p), (2,))
  dims = (512 + 62, 512, 1024, 1024, 1)
  assert M.count_params(vc) == sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))
  with pytest.raises(ValueError, match="Critic expects"):
    abstract_init(critic, z, jax.ShapeDtypeStruct((3, 62), jnp.float32))


def test_encoder_critic_numerics():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 64, 64, 4)), jnp.float32)    # 64 -> ... -> 1: z is 512-d here too
  p = jnp.asarray(rng.normal(size=(2, 62)), jnp.float32)
  enc, critic = Encoder(), Critic()

  @jax.jit
  def run(x, p, k):
    ve = enc.init(key(0), x)
    z = enc.apply(ve, x)
    vc = critic.init(key(1), z, p)
    ev = critic.apply(vc, z, p)
    tr = [critic.apply(vc, z, p, train=True, rngs={"dropout": kd}) for kd in jax.random.split(k)]
    return z, ev, tr

  z, ev, (tr1, tr2) = run(x, p, key(2))
  z2 = run(x.at[..., 3].set(-x[..., 3]), p, key(2))[0]   # landmark-map channel is not seen
  np.testing.assert_array_equal(z, z2)
  assert np.all(np.isfinite(ev)) and np.all(np.asarray(z) >= 0)
  assert not np.allclose(tr1, tr2)                                       # dropout only in train mode


# -------------------------------------------------------------------------- compiled numerics
