"""Sampling text from a decoder, and from a finished run's weights.

`sample` / `sample_many` decode from any causal decoder module (Llama,
Qwen2, GPT-2, BitNet) without a KV cache: the tokens live in a fixed-length
buffer of L = min(prompt + max_tokens, max_len) positions, and each step runs
the model on the whole buffer and reads the logits at the current position
(causal attention: the padding to the right changes nothing). One compiled
`lax.while_loop` per (module, samples, L); O(L^2) work, fine for the small
models dpjax trains.

Sampling: temperature (0: greedy argmax), then nucleus (top-p) filtering,
over float32 logits. Step t (0 for the first new token) of sample r draws
with `fold_in(fold_in(key, t), r)`, so a fixed key gives the same text, and
sample 0 of `sample_many` is what `sample` returns.

`load_run(workdir)` rebuilds a finished run's model exactly as the trainer
did (`train.load_config` + `model_setup.create`) and restores the latest
checkpoint's trainable parameters and their EMA. The template of the saved
`TrainState` is built with the run's own DP chain (`run_setup.build_stages`
with the `PrivacyPlan` recorded in the checkpoint's metadata, so the data
need not be rebuilt) and a dummy noise key: the public checkpoint holds zero
keys in place of the secret ones, and sampling needs only the parameters, so
the secret store is never read.

Privacy: generation is post-processing of the DP weights (no privacy cost).
`seed` only drives sampling and is public.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from dpjax import checkpointing
from dpjax import ema as ema_lib
from dpjax import model_setup
from dpjax import optimizers
from dpjax import randomness
from dpjax import run_setup
from dpjax import steps as steps_lib
from dpjax import train
from dpjax.data import tasks
from dpjax.data import tokenizers
from dpjax.privacy_plan import PrivacyPlan

PyTree = Any

DECODER_FAMILIES = ('llama', 'qwen2', 'gpt2', 'bitnet')
WEIGHTS = ('ema', 'raw')
CHAT_MODES = ('auto', 'on', 'off')


class GenerationError(Exception):
  """A run cannot be sampled from as asked (one line, for the CLI)."""


# ----------------------------------------------------------------------------
# Sampling.


def _choose(logits: jax.Array, key: jax.Array, temperature: jax.Array,
            top_p: jax.Array) -> jax.Array:
  """One token id from `logits` [V]: greedy if temperature == 0, else
  temperature then nucleus (smallest set of mass >= top_p) sampling."""
  logits = logits.astype(jnp.float32)
  greedy = jnp.argmax(logits)
  scaled = logits / jnp.where(temperature > 0, temperature, 1.0)
  probs = jax.nn.softmax(scaled)
  desc = jnp.sort(probs)[::-1]
  # Keep a token while the mass before it is below top_p (the top one is
  # always kept); ties with the cut-off token are kept too.
  kept = (jnp.cumsum(desc) - desc) < top_p
  cutoff = desc[jnp.maximum(jnp.sum(kept) - 1, 0)]
  keep = (probs >= cutoff) | (top_p >= 1.0)
  sampled = jax.random.categorical(key, jnp.where(keep, scaled, -jnp.inf))
  return jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)


@functools.lru_cache(maxsize=16)
def _decoder(module):
  """The jitted decoding loop of `module` (one compilation per buffer
  shape [samples, L] and number of stop ids)."""

  def decode(params, tokens, prompt_len, key, temperature, top_p, stop_ids):
    n, end = tokens.shape
    rows = jnp.arange(n, dtype=jnp.uint32)

    def cond(carry):
      pos, _, done, _ = carry
      return (pos < end) & ~jnp.all(done)

    def body(carry):
      pos, tokens, done, count = carry
      logits = module.apply({'params': params}, tokens, deterministic=True)
      last = jax.lax.dynamic_index_in_dim(logits, pos - 1, axis=1,
                                          keepdims=False)
      step_key = jax.random.fold_in(key, pos - prompt_len)
      keys = jax.vmap(lambda r: jax.random.fold_in(step_key, r))(rows)
      nxt = jax.vmap(_choose, in_axes=(0, 0, None, None))(
          last, keys, temperature, top_p)
      stop = jnp.any(nxt[:, None] == stop_ids[None, :], axis=1)
      count = count + (~done & ~stop).astype(jnp.int32)
      done = done | stop
      tokens = jax.lax.dynamic_update_slice_in_dim(
          tokens, jnp.where(done, 0, nxt)[:, None], pos, axis=1)
      return pos + 1, tokens, done, count

    init = (prompt_len, tokens, jnp.zeros((n,), bool),
            jnp.zeros((n,), jnp.int32))
    _, tokens, _, count = jax.lax.while_loop(cond, body, init)
    return tokens, count

  return jax.jit(decode)


def _check_key(key) -> None:
  if not (isinstance(key, jax.Array) and
          jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ()):
    raise ValueError('key must be a typed PRNG key (jax.random.key), got '
                     f'{getattr(key, "dtype", type(key).__name__)}')


def sample_many(module, params: PyTree, prompt_ids: Sequence[int], *,
                num_samples: int, max_tokens: int, key: jax.Array,
                temperature: float = 1.0, top_p: float = 1.0,
                eos_ids: Sequence[int] = (),
                max_len: int | None = None) -> list[list[int]]:
  """Samples `num_samples` continuations of one prompt, decoded together.

  Args:
    module: a causal decoder (`module.apply({'params': p}, tokens,
      deterministic=True)` -> [B, T, V] logits).
    params: its full parameters.
    prompt_ids: the prompt's token ids (at least one).
    num_samples: continuations to draw (independent given `key`).
    max_tokens: at most this many new tokens each.
    key: typed PRNG key (`jax.random.key`); step t of sample r uses
      `fold_in(fold_in(key, t), r)`.
    temperature: >= 0; 0 decodes greedily.
    top_p: in (0, 1]: nucleus sampling; 1 keeps every token.
    eos_ids: ids that end a sample (not included in its output).
    max_len: the model's largest number of positions; the buffer holds at
      most this many tokens, prompt included.

  Returns:
    One list of new token ids per sample, stop token excluded.

  Raises:
    ValueError: an argument out of range, or a prompt that leaves no room
      for a new token within `max_len`.
  """
  _check_key(key)
  prompt = [int(i) for i in prompt_ids]
  if not prompt:
    raise ValueError('prompt_ids is empty: give at least one token (e.g. '
                     'the tokenizer\'s bos or eos id)')
  if num_samples < 1 or max_tokens < 1:
    raise ValueError(f'num_samples ({num_samples}) and max_tokens '
                     f'({max_tokens}) must be >= 1')
  if not temperature >= 0:
    raise ValueError(f'temperature must be >= 0, got {temperature}')
  if not 0 < top_p <= 1:
    raise ValueError(f'top_p must be in (0, 1], got {top_p}')
  length = len(prompt) + max_tokens
  if max_len is not None:
    if len(prompt) >= max_len:
      raise ValueError(f'the prompt has {len(prompt)} tokens; the model '
                       f'takes at most {max_len} positions, so it must be '
                       f'shorter than {max_len} tokens')
    length = min(length, max_len)
  tokens = np.zeros((num_samples, length), np.int32)
  tokens[:, :len(prompt)] = prompt
  stops = jnp.asarray(sorted({int(i) for i in eos_ids}), jnp.int32)
  out, count = _decoder(module)(
      params, jnp.asarray(tokens), jnp.int32(len(prompt)), key,
      jnp.float32(temperature), jnp.float32(top_p), stops.reshape(-1))
  out, count = np.asarray(out), np.asarray(count)
  start = len(prompt)
  return [out[r, start:start + count[r]].tolist()
          for r in range(num_samples)]


def sample(module, params: PyTree, prompt_ids: Sequence[int], *,
           max_tokens: int, key: jax.Array, temperature: float = 1.0,
           top_p: float = 1.0, eos_ids: Sequence[int] = (),
           max_len: int | None = None) -> list[int]:
  """Samples one continuation of `prompt_ids` (see `sample_many`).

  Returns:
    The new token ids, stop token excluded.
  """
  return sample_many(module, params, prompt_ids, num_samples=1,
                     max_tokens=max_tokens, key=key, temperature=temperature,
                     top_p=top_p, eos_ids=eos_ids, max_len=max_len)[0]


def max_positions(model_config) -> int | None:
  """The most positions a family's config allows (None: no limit known)."""
  for name in ('max_position_embeddings', 'n_positions'):
    value = getattr(model_config, name, None)
    if value:
      return int(value)
  return None


# ----------------------------------------------------------------------------
# Prompts: the run's template and stop tokens.


def _special_tokens(tokenizer) -> dict[str, str]:
  """What a Jinja template sees as bos/eos_token (as in training: the
  tokenizer's `bos_token`/`eos_token` strings, if it has them)."""
  return {name: getattr(tokenizer, name) for name in ('bos_token',
                                                       'eos_token')
          if isinstance(getattr(tokenizer, name, None), str)}


def prompt_template(config, tokenizer, chat: str):
  """The template a prompt is rendered with, or '' for the raw prompt.

  Args:
    config: the run's config.
    tokenizer: the run's tokenizer.
    chat: 'on': the tokenizer's chat template; 'off': the raw prompt;
      'auto': the run's instruction format when it did instruction tuning
      (`data.task == 'instruction'`: the tokenizer's chat template, else
      `tasks.DEFAULT_TEMPLATE`, as `dpjax.data.user_files.encode` chose),
      the raw prompt otherwise.

  Returns:
    A template for `dpjax.data.tasks.apply_template` (None: its default
    instruction format), or '' for the raw prompt.

  Raises:
    GenerationError: 'on' with a tokenizer that has no chat template, or an
      unknown mode.
  """
  if chat not in CHAT_MODES:
    raise GenerationError(f'--chat={chat!r}; valid: {", ".join(CHAT_MODES)}')
  chat_template = getattr(tokenizer, 'chat_template', None) or None
  if chat == 'off':
    return ''
  if chat == 'on':
    if chat_template is None:
      raise GenerationError("--chat=on: the run's tokenizer has no chat "
                            'template (use --chat=off or auto)')
    return chat_template
  if config.data.get('task') != 'instruction':
    return ''
  return chat_template  # None: the default instruction format


def render_prompt(template, prompt: str, tokenizer) -> str:
  """The prompt text the model sees (`template` from `prompt_template`)."""
  if template == '':
    return prompt
  try:
    return tasks.apply_template(template, prompt, '',
                                special_tokens=_special_tokens(tokenizer))[0]
  except ValueError as e:
    raise GenerationError(f'the prompt template cannot be applied: {e}') from e


def stop_ids(tokenizer, template) -> list[int]:
  """The eos id, and a chat template's end-of-turn token when it differs.

  The end-of-turn token is the special token a template writes right after
  an answer (e.g. SmolLM2's '<|im_end|>', Llama 3's '<|eot_id|>').
  """
  ids = {int(tokenizer.eos_id)}
  hf = getattr(tokenizer, 'tokenizer', None)
  if not template or hf is None:
    return sorted(ids)
  marker = 'dpjax-answer'
  try:
    after = tasks.apply_template(template, 'x', marker,
                                 special_tokens=_special_tokens(tokenizer))[1]
  except ValueError:
    return sorted(ids)
  suffix = after[after.find(marker) + len(marker):] if marker in after else ''
  special = {i for i, t in hf.get_added_tokens_decoder().items() if t.special}
  first = hf.encode(suffix, add_special_tokens=False).ids[:1] if suffix else []
  ids.update(i for i in first if i in special)
  return sorted(ids)


# ----------------------------------------------------------------------------
# A finished run.


@dataclasses.dataclass
class Run:
  """A run's model with the restored weights.

  Attributes:
    config: the run's config (`workdir/config.json`).
    model: `model_setup.Model` as built by the trainer.
    params: full parameters (trainable restored, combined with frozen).
    tokenizer: what the run encoded its data with.
    step: the checkpoint's step.
    weights: 'ema' or 'raw'.
    has_ema: the checkpoint holds an EMA ('ema' falls back to raw if not).
  """
  config: Any
  model: Any
  params: PyTree
  tokenizer: Any
  step: int
  weights: str
  has_ema: bool


def _plan_from_meta(meta: dict[str, Any]):
  """The `PrivacyPlan` a checkpoint's metadata recorded."""
  known = {f.name for f in dataclasses.fields(PrivacyPlan)}
  fields = {k: v for k, v in meta['plan'].items() if k in known}
  if fields.get('batch_schedule') is not None:
    fields['batch_schedule'] = tuple(fields['batch_schedule'])
  if fields.get('lmo_params') is not None:
    fields['lmo_params'] = tuple(tuple(p) for p in fields['lmo_params'])
  return PrivacyPlan(**fields)


def _read_meta(directory: str, step: int) -> dict[str, Any]:
  """The JSON metadata item of checkpoint `step` (no state read)."""
  mngr = ocp.CheckpointManager(directory)
  try:
    return mngr.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))['meta']
  finally:
    mngr.close()


def run_tokenizer(config, model):
  """The tokenizer the run's data used (see `dpjax.run_setup.build_inputs`)."""
  if config.data.tokenizer == 'model':
    return model.tokenizer
  return tokenizers.ByteTokenizer()


def check_workdir(workdir: str) -> str:
  """The run's checkpoint directory; raises GenerationError (one line) when
  `workdir` has no saved config or no checkpoint."""
  if not os.path.isfile(os.path.join(workdir, train.CONFIG_FILE)):
    raise GenerationError(f'{workdir!r} holds no {train.CONFIG_FILE}: not the '
                          'work directory of a dpjax run (python -m '
                          'dpjax.main --workdir=...)')
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  steps = [d for d in (os.listdir(directory) if os.path.isdir(directory)
                       else []) if d.isdigit()]
  if not steps:
    raise GenerationError(f'{workdir!r} holds no checkpoint yet (the run has '
                          'not saved one)')
  return directory


def load_run(workdir: str, weights: str = 'ema') -> Run:
  """Rebuilds `workdir`'s model and restores its latest checkpoint.

  Args:
    workdir: a run's work directory (`config.json`, `checkpoints/`).
    weights: 'ema' (the EMA of the trainable parameters, as exported) or
      'raw' (the last iterate).

  Returns:
    The `Run`.

  Raises:
    GenerationError: no config or checkpoint, an encoder or classifier run,
      or an unknown `weights`.
    dpjax.configuration.ConfigError: the model cannot be rebuilt (e.g. the
      base checkpoint is gone).
  """
  if weights not in WEIGHTS:
    raise GenerationError(f'--weights={weights!r}; valid: ema, raw')
  directory = check_workdir(workdir)
  config = train.load_config(workdir)
  family = config.model.get('family')
  if config.data.get('task') == 'genre' or family not in DECODER_FAMILIES:
    raise GenerationError(
        f'the run trained a {family} '
        f'{"classifier" if config.data.get("task") == "genre" else "model"}: '
        f'generation needs a decoder LM ({", ".join(DECODER_FAMILIES)})')
  model = model_setup.create(config)
  if model.family not in DECODER_FAMILIES:
    raise GenerationError(f'the run trained a {model.family} model: '
                          'generation needs a decoder LM '
                          f'({", ".join(DECODER_FAMILIES)})')
  ckpt = checkpointing.Checkpointer(directory, config.train.keep_checkpoints)
  try:
    step = ckpt.latest_step()
    if step is None:
      raise GenerationError(f'{workdir!r} holds no complete checkpoint')
    plan = _plan_from_meta(_read_meta(directory, step))
    # Any key of the right implementation: the checkpoint stores zero keys.
    dummy_key = jax.random.key(0, impl=randomness.NOISE_KEY_IMPL)
    stages, _, _ = run_setup.build_stages(config, plan, dummy_key)
    tx = optimizers.chain(stages)
    template = jax.eval_shape(
        lambda t: steps_lib.TrainState(step=jnp.zeros((), jnp.int32),
                                       trainable=t, opt_state=tx.init(t)),
        model.trainable)
    state, _ = ckpt.restore(step, template)
  finally:
    ckpt.close()
  has_ema = ema_lib.find_ema(state.opt_state) is not None
  trainable = (steps_lib.ema_trainable(state) if weights == 'ema'
               else state.trainable)
  params = model.combine(trainable, model.frozen)
  return Run(config, model, params, run_tokenizer(config, model), int(step),
             weights, has_ema)


def generate(run: Run, prompt: str, *, max_tokens: int = 64,
             temperature: float = 0.8, top_p: float = 0.95, seed: int = 0,
             chat: str = 'auto', num_samples: int = 1) -> list[str]:
  """Samples `num_samples` completions of `prompt` from `run`.

  The prompt is rendered as `prompt_template(run.config, ..., chat)` says
  and encoded with the run's tokenizer; an empty encoding starts from the
  tokenizer's bos id, else its eos id (the document separator of packed
  training data). Sampling stops at the eos id and a chat template's
  end-of-turn token.

  Returns:
    The completions' text (prompt excluded).

  Raises:
    GenerationError: an argument out of range, or a prompt too long for the
      model.
  """
  tok = run.tokenizer
  template = prompt_template(run.config, tok, chat)
  ids = list(tok.encode(render_prompt(template, prompt, tok)))
  if not ids:
    start = getattr(tok, 'bos_id', None)
    ids = [tok.eos_id if start is None else start]
  try:
    outs = sample_many(run.model.module, run.params, ids,
                       num_samples=num_samples, max_tokens=max_tokens,
                       key=jax.random.key(seed), temperature=temperature,
                       top_p=top_p, eos_ids=stop_ids(tok, template),
                       max_len=max_positions(run.model.config))
  except ValueError as e:
    raise GenerationError(str(e)) from e
  return [tok.decode(o) for o in outs]
