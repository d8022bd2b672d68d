"""Canary exposure of a trained model ("The Secret Sharer", Carlini et al. 2019).

For each inserted canary, the model scores the true secret against random
candidates of the same format; exposure = log2|R| - log2(rank). A model that
memorized the canary ranks it first (exposure log2|R|); at chance the
expected exposure is about 1/ln 2 = 1.44 bits. Exposure is an empirical
measurement, not a privacy guarantee.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpjax.data import exposure as exposure_lib


def make_score_fn(module, params, tokenizer, batch_size: int = 256
                  ) -> Callable[[Sequence[str]], np.ndarray]:
  """texts -> summed next-token NLL of each text under the causal LM."""

  @jax.jit
  def nll(params, tokens, weights):
    logits = module.apply({'params': params}, tokens[:, :-1],
                          deterministic=True).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
    return jnp.sum(ce * weights[:, 1:], axis=-1)

  def score(texts):
    ids = [tokenizer.encode(t) for t in texts]
    length = max(len(i) for i in ids)
    out = []
    for s in range(0, len(ids), batch_size):
      chunk = ids[s:s + batch_size]
      n = len(chunk)
      toks = np.full((batch_size, length), tokenizer.pad_id, np.int32)
      w = np.zeros((batch_size, length), np.float32)
      for r, i in enumerate(chunk):
        toks[r, :len(i)] = i
        w[r, :len(i)] = 1.0
      out.append(np.asarray(nll(params, toks, w))[:n])
    return np.concatenate(out)

  return score


def canary_exposures(module, params, tokenizer, canaries, *, n_samples: int,
                     seed: int) -> list[dict[str, Any]]:
  """Sampled exposure of each canary (a dict per canary)."""
  score = make_score_fn(module, params, tokenizer)
  out = []
  for i, c in enumerate(canaries):
    res = exposure_lib.sampled_exposure(score, c.prefix, c.secret,
                                        n_samples=n_samples, seed=seed + i)
    out.append({'repetitions': c.repetitions, 'rank': float(res.rank),
                'exposure_bits': float(res.exposure),
                'max_exposure_bits': float(np.log2(res.space_size)),
                'chance_exposure_bits': exposure_lib.expected_exposure_at_chance(
                    res.space_size),
                'candidates_scored': int(res.n_scored)})
  return out
