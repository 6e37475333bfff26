"""Scratch throughput check of the VQ-VAE training step on CPU.

Times one jitted step (forward + IS/MSE + commitment + backward + Adam 1e-3 +
EMA codebook update) for the MDVAE settings (audio: 1024 frames of 513 bins;
visual: 256 images of 64×64) and prints one JSON line per case with the best
of ``--repeats`` rounds of ``--steps`` timed steps (compile and one warm-up
step excluded). Machines shared with other jobs are noisy: compare layouts
back to back and trust the best round.

  python benchmarks/scratch_vqvae_perf.py --model audio visual --impl xla fast
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import optax

from avrep.models.vqvae import SETTINGS, build_vqvae
from avrep.nn.losses import itakura_saito_from_log, mse

# model name -> (setting, batch shape): the MDVAE settings of the targets.
CASES = {
    "audio": ("mdvae_audio", (1024, 513)),
    "visual": ("mdvae_visual", (256, 64, 64, 3)),
}


def make_step(model, audio: bool):
  tx = optax.adam(1e-3)

  def loss_fn(params, state, x):
    out, state = model.apply({"params": params, **state}, x, train=True,
                             mutable=list(state))
    rec = (itakura_saito_from_log(x, out["log_recon"]) if audio
           else mse(x, out["recon"]))
    return rec + out["commitment_loss"], (state, out["perplexity"])

  @jax.jit
  def step(params, opt_state, state, x):
    grads, (state, perplexity) = jax.grad(loss_fn, has_aux=True)(
        params, state, x)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, state, perplexity

  return tx, step


def count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def bench(name, impl, arch, steps, repeats):
  setting, shape = CASES[name]
  model = build_vqvae({**SETTINGS[setting], "impl": impl, "arch": arch})
  key = jax.random.PRNGKey(0)
  x = jax.random.uniform(key, shape, minval=-0.5, maxval=0.5)
  if name == "audio":
    x = jnp.exp(4.0 * x) ** 2  # positive power spectra
  variables = jax.jit(lambda x: model.init(key, x, train=True))(x)
  params = variables.pop("params")
  tx, step = make_step(model, name == "audio")
  carry = (params, tx.init(params), variables)
  carry = jax.block_until_ready(step(*carry, x)[:3])  # compile
  carry = jax.block_until_ready(step(*carry, x)[:3])  # warm-up
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(steps):
      carry = step(*carry, x)[:3]
    jax.block_until_ready(carry)
    best = min(best, (time.perf_counter() - t0) / steps)
  print(json.dumps(dict(
      model=name, setting=setting, impl=impl, arch=arch, batch=shape[0],
      step_ms=round(best * 1e3, 1),
      items_per_s=round(shape[0] / best, 1),
      params=count(params), vq_ema=count(variables["vq_ema"]))), flush=True)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--model", nargs="+", default=["audio", "visual"])
  p.add_argument("--impl", nargs="+", default=["xla", "fast"])
  p.add_argument("--arch", default="code")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--repeats", type=int, default=3)
  a = p.parse_args()
  for name in a.model:
    for impl in a.impl:
      bench(name, impl, a.arch, a.steps, a.repeats)


if __name__ == "__main__":
  main()
