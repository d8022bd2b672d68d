"""Canary exposure of a trained model ("The Secret Sharer", Carlini et al. 2019).

For each inserted canary, the model scores the true secret against m random
candidates of the same format (K = m + 1 texts scored). Reported per canary:

* exposure_rank_bits: the rank-based (sampled) exposure, log2 K - log2 of the
  secret's rank among the K scored texts. Its ceiling is log2 K
  (sampled_ceiling_bits, 10.97 bits for K = 2,001), reached when the secret
  beats every sampled candidate.
* exposure_extrapolated_bits: log2|R| - log2 of the rank extrapolated to the
  full space R (rank_hat = 1 + (|R| - 1) k / m); it can reach the full-space
  maximum log2|R| (19.93 bits for 6 digits) from a sample of K, which then
  only shows that the rank is below about |R| / m.
  exposure_extrapolated_lower95_bits is a one-sided 95% Clopper-Pearson
  lower bound for it.

At chance the expected exposure is about 1/ln 2 = 1.44 bits on either scale.
Exposure is an empirical measurement, not a privacy guarantee.
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
  """Sampled exposure of each canary (a dict per canary, `exposure_fields`)."""
  score = make_score_fn(module, params, tokenizer)
  out = []
  for i, c in enumerate(canaries):
    res = exposure_lib.sampled_exposure(score, c.prefix, c.secret,
                                        n_samples=n_samples, seed=seed + i)
    out.append({'repetitions': c.repetitions, **exposure_fields(res)})
  return out


EXTRAPOLATION_METHOD = ('rank_hat = 1 + (|R| - 1) k / m from k of m uniform '
                        'samples (unbiased for the rank); log2|R| whenever '
                        'k = 0')


def exposure_fields(res: exposure_lib.ExposureResult) -> dict[str, Any]:
  """The reported fields of one canary's sampled exposure.

  The first fields are qualified (sampled vs extrapolated); `rank`,
  `exposure_bits` (= exposure_extrapolated_bits), `max_exposure_bits`
  (= full_space_max_bits) and `candidates_scored` (= sampled_candidates)
  keep their earlier names and meanings for existing readers.
  """
  return {
      'sampled_candidates': int(res.n_scored),
      'sampled_rank': float(res.sampled_rank),
      'exposure_rank_bits': float(res.rank_exposure),
      'sampled_ceiling_bits': float(res.sampled_ceiling_bits),
      'sampled_chance_bits': exposure_lib.expected_exposure_at_chance(
          res.n_scored),
      'exposure_extrapolated_bits': float(res.exposure),
      'exposure_extrapolated_lower95_bits': float(
          res.extrapolated_lower_bound(0.95)),
      'extrapolation_method': (EXTRAPOLATION_METHOD
                               if res.method == 'sampled' else 'none (exact)'),
      'full_space_size': int(res.space_size),
      'full_space_max_bits': float(res.full_space_max_bits),
      'chance_exposure_bits': exposure_lib.expected_exposure_at_chance(
          res.space_size),
      'rank': float(res.rank),
      'exposure_bits': float(res.exposure),
      'max_exposure_bits': float(res.full_space_max_bits),
      'candidates_scored': int(res.n_scored),
  }
