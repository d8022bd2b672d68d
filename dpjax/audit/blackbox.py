"""Black-box canary audit of a language-model run (`config.audit`).

A run with `audit.enabled` trains on m extra records, the canaries: each a
fresh sequence of `audit.canary_tokens` token ids drawn uniformly from the
run's vocabulary (special tokens excluded), padded and masked to
`data.seq_len` like every other record. Each canary is included in the
training set independently with probability 1/2. The Poisson sampler draws
from the N real records plus the included canaries at the plan's rate q;
the ledger is the real data's (N, q, sigma, T unchanged): the canaries are
not counted in N. After training, each canary is scored by the final model
(the raw last iterate, not the EMA) as minus its mean per-token loss, and
`dpjax.accounting.one_run_audit.epsilon_lower_bound` turns the scores and
the coins into a lower bound eps_lb on the epsilon of the run's mechanism at
confidence 1 - alpha (Steinke, Nasr and Jagielski 2023, "Privacy Auditing
with One (1) Training Run"). The report puts eps_lb beside the claimed
epsilon (`dpjax.reporting`).

Secrecy: the canary tokens and the coins are secret per-record randomness,
like the noise. They are derived from the run's `SecretRandomness` material
(OS entropy by default) by HMAC-SHA256 under their own label, never from
`config.seed`, so a resumed run that restores the material from the secret
store regenerates the same canaries; nothing about an individual canary
(tokens, coin, score) is written anywhere: the report holds only m, the
number included and the aggregate statistics of the bound.

Exports: with `audit.export_with_canaries=False` (the default) the run
writes no HF/GGUF export (the model was trained on the canaries); the
checkpoints are written as usual.

Formal guarantees:
  Privacy of the real records: the canaries are drawn independently of the
  data, and each real record is still included in each step independently
  with probability q = B / N (the sampler's rate over N + n_in records is
  q), clipped to C and noised with sigma C: the accounted mechanism (q,
  sigma, T over N real records) is what ran, with n_in extra records that
  are independent of the real ones. The 1/B normalisation (and DP-Adam-AC's
  clip count) divides by the planned B = qN, a public constant: the
  canaries scale the update by about (N + n_in) / N, which changes utility,
  not the guarantee.
  Validity of eps_lb: each canary is itself one record under the same
  mechanism, and its coin is an independent fair coin, so Theorem 3 of
  Steinke et al. applies to the guesses made from the scores of the final
  model (post-processing of the released weights): if the run is
  (eps, delta)-DP in each record, P[eps_lb > eps] <= alpha over the coins,
  the sampling and the noise. A black-box eps_lb from one run and loss
  scores is typically far below the true epsilon: it can reveal an
  over-claimed epsilon, never show that a claim is tight.
  Not covered: a run resumed without its secret state (the canaries can no
  longer be regenerated: the audit is then reported as not computed), and
  user-level runs and shuffle sampling (refused by `dpjax.configuration`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpjax import sampling
from dpjax.accounting import one_run_audit

METHOD = ('one-run black-box canaries (Steinke et al. 2023), loss scores')
SCORE = ('minus the mean per-token loss of the canary under the final raw '
         'weights (last iterate), no dropout')
NOT_EXPORTED = ('model not exported: trained with audit canaries; set '
                'audit.export_with_canaries=True or run without audit')
_LABEL = b'dpjax audit canaries v1'


@dataclasses.dataclass(frozen=True)
class Settings:
  """`config.audit` as read by the run."""
  canaries: int
  canary_tokens: int
  alpha: float
  export_with_canaries: bool

  @classmethod
  def from_config(cls, config) -> Settings:
    a = config.audit
    return cls(int(a.canaries), int(a.canary_tokens), float(a.alpha),
               bool(a.export_with_canaries))


def canary_generator(secret) -> np.random.Generator:
  """The canaries' generator: HMAC-SHA256 of the secret material under its
  own label (independent of the noise, sampler and dropout streams, which
  use other labels), never `config.seed`."""
  digest = hmac.new(secret.to_bytes(), _LABEL, hashlib.sha256).digest()
  return np.random.Generator(np.random.PCG64(
      np.random.SeedSequence(int.from_bytes(digest, 'little'))))


def special_token_ids(tokenizer) -> set[int]:
  """pad, eos and bos ids, and a Hugging Face tokenizer's special tokens."""
  ids = {getattr(tokenizer, k, None) for k in ('pad_id', 'eos_id', 'bos_id')}
  inner = getattr(tokenizer, 'tokenizer', None)
  try:
    added = inner.get_added_tokens_decoder() if inner is not None else {}
  except AttributeError:
    added = {}
  ids |= {int(i) for i, tok in added.items() if getattr(tok, 'special', True)}
  return {int(i) for i in ids if i is not None}


def token_pool(tokenizer, model_vocab: int | None = None) -> np.ndarray:
  """The ids canaries are drawn from: the vocabulary (the smaller of the
  tokenizer's and the model's) without the special tokens."""
  vocab = int(tokenizer.vocab_size)
  if model_vocab:
    vocab = min(vocab, int(model_vocab))
  pool = np.setdiff1d(np.arange(vocab, dtype=np.int64),
                      np.fromiter(special_token_ids(tokenizer), np.int64))
  if pool.size < 2:
    raise ValueError(f'the vocabulary ({vocab} ids) leaves {pool.size} '
                     'non-special tokens to draw canaries from')
  return pool


def draw_canaries(secret, m: int, length: int, pool: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
  """(tokens [m, length] int32, included [m] bool) from the secret stream:
  tokens uniform over `pool`, each coin an independent fair coin."""
  rng = canary_generator(secret)
  tokens = pool[rng.integers(0, pool.size, size=(m, length))]
  included = rng.integers(0, 2, size=m).astype(bool)
  return tokens.astype(np.int32), included


def canary_records(tokens: np.ndarray, seq_len: int, pad_id: int
                   ) -> dict[str, np.ndarray]:
  """Causal-LM records of the canaries (`dpjax.data.packing` layout): the
  length-L canary gives L - 1 weighted targets, the rest is padding."""
  m, length = tokens.shape
  if length - 1 > seq_len:
    raise ValueError(f'canary length {length} exceeds data.seq_len + 1 = '
                     f'{seq_len + 1}')
  inputs = np.full((m, seq_len), pad_id, np.int32)
  targets = np.full((m, seq_len), pad_id, np.int32)
  weights = np.zeros((m, seq_len), np.float32)
  inputs[:, :length - 1] = tokens[:, :-1]
  targets[:, :length - 1] = tokens[:, 1:]
  weights[:, :length - 1] = 1.0
  return {'inputs': inputs, 'targets': targets, 'weights': weights}


class CanarySampler(sampling.PoissonSampler):
  """Poisson over the N real records and the n_in included canaries at the
  real data's rate q (indices >= N are canaries). A batch-size schedule's
  B_t (of the real data) is scaled so that q_t = B_t / N holds."""

  def __init__(self, n_real: int, n_canaries: int,
               expected_batch_size: float, max_batch_size: int, seed):
    total = n_real + n_canaries
    super().__init__(total, expected_batch_size * total / n_real,
                     max_batch_size, seed)
    self.n_real = int(n_real)

  def draw(self, expected_batch_size: float | None = None):
    if expected_batch_size is not None:
      expected_batch_size *= self.dataset_size / self.n_real
    return super().draw(expected_batch_size)


def score_canaries(module, params, records: dict[str, np.ndarray],
                   batch_size: int = 64) -> np.ndarray:
  """Minus the mean per-token loss of each record under `params` (host
  arrays of the full model), deterministic (no dropout)."""

  @jax.jit
  def neg_loss(params, inputs, targets, weights):
    logits = module.apply({'params': params}, inputs,
                          deterministic=True).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return -jnp.sum(ce * weights, -1) / jnp.maximum(jnp.sum(weights, -1), 1.0)

  n = records['inputs'].shape[0]
  batch_size = min(batch_size, n)
  out = []
  for s in range(0, n, batch_size):
    chunk = {k: v[s:s + batch_size] for k, v in records.items()}
    k = chunk['inputs'].shape[0]
    if k < batch_size:  # one compiled shape
      chunk = {key: np.concatenate([v, np.zeros((batch_size - k,) + v.shape[1:],
                                                v.dtype)])
               for key, v in chunk.items()}
    out.append(np.asarray(neg_loss(params, chunk['inputs'], chunk['targets'],
                                   chunk['weights']))[:k])
  return np.concatenate(out).astype(np.float64)


def _ceiling(m: int, r: int, alpha: float, delta: float) -> float | None:
  """The largest eps_lb that r guesses among m canaries can give."""
  try:
    return float(one_run_audit.max_epsilon_lower_bound(
        int(m), int(r), alpha=alpha, delta=delta))
  except (ValueError, ZeroDivisionError):
    return None


class CanaryAudit:
  """One run's canaries: what the trainer trains on and how it is scored.

  Attributes:
    settings: the run's `Settings`.
    n_real: N, the real training records (the ledger's).
    records: every canary's record arrays (secret; never written).
    included: each canary's coin (secret; never written).
    valid: False when the canaries could not be regenerated (a resume
      without the secret state): eps_lb is then not computed.
  """

  NOT_EXPORTED = NOT_EXPORTED

  def __init__(self, settings: Settings, n_real: int, records, included,
               valid: bool):
    self.settings = settings
    self.n_real = int(n_real)
    self.records = records
    self.included = np.asarray(included, bool)
    self.valid = bool(valid)

  def __repr__(self) -> str:  # never print the canaries or coins
    return (f'CanaryAudit(m={self.settings.canaries}, '
            f'length={self.settings.canary_tokens})')

  @classmethod
  def for_run(cls, config, data, secret, *, model_vocab: int | None = None,
              valid: bool = True) -> CanaryAudit:
    """The canaries of a run whose secret material is `secret`.

    Args:
      config: the run's (validated) config.
      data: its `input_pipeline.Datasets` (the real training set).
      secret: its `randomness.SecretRandomness` (the canaries derive from it).
      model_vocab: the model's vocabulary size, if smaller than the
        tokenizer's.
      valid: False when `secret` is not the material the run started with.
    """
    s = Settings.from_config(config)
    if set(data.train) != {'inputs', 'targets', 'weights'}:
      raise ValueError('audit canaries need causal-LM records (inputs, '
                       f'targets, weights), got {sorted(data.train)}')
    pool = token_pool(data.tokenizer, model_vocab)
    tokens, included = draw_canaries(secret, s.canaries, s.canary_tokens,
                                     pool)
    records = canary_records(tokens, int(config.data.seq_len),
                             int(data.tokenizer.pad_id))
    return cls(s, data.train_size, records, included, valid)

  @property
  def n_included(self) -> int:
    return int(self.included.sum())

  def train_arrays(self, real: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The real records followed by the included canaries (index >= N)."""
    return {k: np.concatenate([v, self.records[k][self.included].astype(
        v.dtype)]) for k, v in real.items()}

  def sampler(self, plan, max_batch_size: int, seed) -> CanarySampler:
    """Poisson over real + included canaries at the plan's q."""
    if plan.sampling != 'poisson':
      raise ValueError('audit canaries need Poisson sampling')
    return CanarySampler(plan.dataset_size, self.n_included,
                         plan.expected_batch_size, max_batch_size, seed)

  @property
  def export_allowed(self) -> bool:
    return self.settings.export_with_canaries

  def scores(self, module, params) -> np.ndarray:
    """Every canary's score under `params` (full model, host arrays)."""
    return score_canaries(module, params, self.records)

  def section(self, module, params, plan, *, export_formats=()
              ) -> dict[str, Any]:
    """The report's audit fields (the claimed epsilon is added by
    `dpjax.reporting`, from the report's own rows)."""
    s = self.settings
    out: dict[str, Any] = {
        'method': METHOD,
        'score': SCORE,
        'num_canaries': s.canaries,
        'num_included': self.n_included,
        'canary_tokens': s.canary_tokens,
        'canary_distribution': ('uniform token ids of the vocabulary without '
                                'special tokens; each included with '
                                'probability 1/2 (secret coins)'),
        'alpha': s.alpha,
        'confidence': 1.0 - s.alpha,
        'delta': plan.delta,
        'ledger': (f'canaries not counted in N: the ledger is the real '
                   f'data\'s (N = {plan.dataset_size}, q = {plan.q:.6g}); '
                   f'the sampler drew from N + {self.n_included} included '
                   'canaries at the same q'),
        'export': self.export_status(export_formats),
    }
    if not self.valid:
      out.update(epsilon_lb=None, status=(
          'not computed: the run resumed without its secret state, so the '
          'canaries it trained on cannot be regenerated'))
      return out
    res = one_run_audit.epsilon_lower_bound(
        self.scores(module, params), self.included, alpha=s.alpha,
        delta=plan.delta)
    ceiling = lambda r: _ceiling(s.canaries, r, s.alpha, plan.delta)
    out.update(
        status='computed',
        epsilon_lb=float(res.epsilon_lb),
        num_guesses=int(res.num_guesses),
        num_correct=int(res.num_correct),
        guesses_included=int(res.k_plus),
        guesses_excluded=int(res.k_minus),
        guess_search=str(res.method),
        epsilon_lb_ceiling=ceiling(res.num_guesses),
        epsilon_lb_ceiling_all_guesses=ceiling(s.canaries))
    logging.info('Audit: eps_lb = %.4g at confidence %.3g (%d of %d guesses '
                 'correct, m = %d)', res.epsilon_lb, 1 - s.alpha,
                 res.num_correct, res.num_guesses, s.canaries)
    return out

  def export_status(self, export_formats) -> str:
    if not export_formats:
      return 'no export formats configured'
    if self.export_allowed:
      return ('exported WITH the canaries (audit.export_with_canaries=True): '
              'the exported weights were trained on the included canaries')
    return NOT_EXPORTED

