"""Validation of run configs: every error names the field and what is valid.

Checks run before anything touches JAX, so bad input never surfaces as a
traceback from deep inside a jitted function, and a setting that would weaken
the guarantee is refused rather than silently accepted.
"""

from __future__ import annotations

import math
from typing import Any


class ConfigError(ValueError):
  """A config field is invalid. The message names the field."""

  def __init__(self, field: str, problem: str, valid: str):
    self.field = field
    super().__init__(f'config.{field}: {problem}; valid: {valid}.')


def _get(config, path: str) -> Any:
  node = config
  for part in path.split('.'):
    try:
      node = node[part]
    except (KeyError, AttributeError) as e:
      raise ConfigError(path, 'missing', 'see configs/default.py') from e
  return node


def _check(ok: bool, field: str, value: Any, valid: str) -> None:
  if not ok:
    raise ConfigError(field, f'got {value!r}', valid)


def _choice(config, field: str, choices) -> str:
  v = _get(config, field)
  _check(v in choices, field, v, 'one of ' + ', '.join(map(repr, choices)))
  return v


def _number(config, field: str, lo=-math.inf, hi=math.inf, *, lo_open=False,
            hi_open=False, integer=False) -> float:
  v = _get(config, field)
  is_num = isinstance(v, (int, float)) and not isinstance(v, bool)
  if integer:
    is_num = isinstance(v, int) and not isinstance(v, bool)
  ok = is_num and not (isinstance(v, float) and math.isnan(v))
  if ok:
    ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
  lb = '(' if lo_open else '['
  rb = ')' if hi_open else ']'
  kind = 'an integer' if integer else 'a number'
  _check(ok, field, v, f'{kind} in {lb}{lo}, {hi}{rb}')
  return v


def validate(config) -> None:
  """Checks every field a run reads; raises ConfigError naming the first bad one."""
  _number(config, 'seed', 0, integer=True)
  _choice(config, 'model.family',
          ('llama', 'qwen2', 'bitnet', 'gpt2', 'bert', 'roberta'))
  init = _choice(config, 'model.init', ('random', 'hf', 'gguf'))
  if init != 'random':
    path = _get(config, 'model.path')
    _check(isinstance(path, str) and path != '', 'model.path', path,
           'a local folder (hf) or .gguf file path')
  _number(config, 'model.dropout_rate', 0, 1, hi_open=True)
  _choice(config, 'peft.mode', ('full', 'lora', 'bias_only', 'norms', 'rgp'))
  if _get(config, 'peft.mode') == 'lora':
    _number(config, 'peft.lora_rank', 1, integer=True)
    _number(config, 'peft.lora_alpha', 0, lo_open=True)
  if _get(config, 'peft.mode') == 'rgp':
    _number(config, 'peft.rgp_rank', 1, integer=True)
    _number(config, 'peft.rgp_power_iters', 1, integer=True)
    _choice(config, 'peft.rgp_cross_sign', (-1.0, 1.0))
    _number(config, 'peft.rgp_extra_grad_scale', 0, lo_open=True)
    _check(not _get(config, 'dp_adam_ac.enabled'), 'dp_adam_ac.enabled',
           True, "False with peft.mode='rgp' (adaptive clipping is not "
           'implemented in carrier space)')

  corpus = _choice(config, 'data.corpus',
                   ('shakespeare', 'records', 'files'))
  if corpus == 'records':
    _number(config, 'data.records_n', 1, integer=True)
    reps = tuple(_get(config, 'data.canary_repetitions'))
    _check(all(isinstance(r, int) and r >= 0 for r in reps),
           'data.canary_repetitions', reps, 'integers >= 0')
    _number(config, 'data.exposure_samples', 1, integer=True)
    _check(_get(config, 'data.task') == 'lm', 'data.task',
           _get(config, 'data.task'), "'lm' for data.corpus='records'")
  task = _choice(config, 'data.task',
                 ('lm', 'genre', 'instruction', 'classification'))
  if corpus == 'files':
    _validate_files(config, task)
  else:
    _check(task in ('lm', 'genre'), 'data.task', task,
           f"'lm' or 'genre' for data.corpus={corpus!r} ('instruction' and "
           "'classification' read your files: data.corpus='files')")
  family = _get(config, 'model.family')
  if task in ('genre', 'classification'):
    _check(family in ('bert', 'roberta'), 'model.family', family,
           f"'bert' or 'roberta' for data.task={task!r}")
  if task == 'genre':
    genres = tuple(_get(config, 'data.genres'))
    _check(len(genres) >= 2 and len(set(genres)) == len(genres) and
           all(g in ('comedy', 'tragedy', 'history') for g in genres),
           'data.genres', genres, '>= 2 distinct of comedy, tragedy, history')
    _number(config, 'data.passage_chars', 1, integer=True)
  elif task != 'classification' and family in ('bert', 'roberta'):
    raise ConfigError('data.task', f'{task!r} with the encoder family '
                      f'{family!r}', "'genre' or 'classification' (sequence "
                      'classification) for encoders')
  if family in ('bert', 'roberta'):
    _check(init != 'random', 'model.init', init,
           "'hf' (a local folder) for the encoder families")
  _choice(config, 'data.tokenizer', ('byte', 'model'))
  _number(config, 'data.seq_len', 2, integer=True)
  _number(config, 'data.max_train_records', 0, integer=True)
  _number(config, 'data.max_eval_records', 1, integer=True)
  _number(config, 'data.eval_batch_size', 1, integer=True)

  dp = _get(config, 'dp.enabled')
  _check(isinstance(dp, bool), 'dp.enabled', dp, 'True or False')
  _number(config, 'dp.delta', 0, 1, lo_open=True, hi_open=True)
  _number(config, 'dp.l2_clip_norm', 0, lo_open=True)
  sigma = _number(config, 'dp.noise_multiplier')
  if sigma < 0:
    _number(config, 'dp.target_epsilon', 0, lo_open=True)
  _number(config, 'dp.max_noise_multiplier', 0, lo_open=True)
  _choice(config, 'dp.accountant', ('pld', 'rdp', 'edgeworth'))
  for name in _get(config, 'dp.report_accountants'):
    _check(name in ('pld', 'rdp', 'edgeworth'), 'dp.report_accountants',
           name, "names among 'pld', 'rdp', 'edgeworth'")
  if dp and _get(config, 'dp.mechanism') == 'gaussian':
    names = tuple(_get(config, 'dp.report_accountants'))
    _check(bool({'pld', 'rdp'} & set(names)), 'dp.report_accountants', names,
           "a list including 'pld' or 'rdp' (an upper bound; an estimate "
           'such as edgeworth is never reported alone)')
  _choice(config, 'dp.sampling', ('poisson', 'shuffle'))
  _number(config, 'dp.insecure_fixed_randomness_seed', -1, integer=True)
  v = _get(config, 'dp.keep_secret_state')
  _check(isinstance(v, bool), 'dp.keep_secret_state', v, 'True or False')
  mech = _choice(config, 'dp.mechanism', ('gaussian', 'lmo'))
  if mech == 'lmo' and dp:
    _validate_lmo(config)

  ac = _get(config, 'dp_adam_ac.enabled')
  _check(isinstance(ac, bool), 'dp_adam_ac.enabled', ac, 'True or False')
  if ac:
    _number(config, 'dp_adam_ac.initial_clip_norm', 0, lo_open=True)
    _number(config, 'dp_adam_ac.target_quantile', 0, 1, lo_open=True,
            hi_open=True)
    _number(config, 'dp_adam_ac.clip_learning_rate', 0)
    _number(config, 'dp_adam_ac.count_noise_std', 0)
    lo = _number(config, 'dp_adam_ac.min_clip_norm', 0)
    _number(config, 'dp_adam_ac.max_clip_norm', lo, lo_open=True)
    _number(config, 'dp_adam_ac.history_size', 1, integer=True)
    _number(config, 'dp_adam_ac.lr_min_multiplier', 0, lo_open=True)
    _number(config, 'dp_adam_ac.lr_max_multiplier',
            _get(config, 'dp_adam_ac.lr_min_multiplier'))
  steps = _number(config, 'train.steps', 1, integer=True)
  batch = _number(config, 'train.batch_size', 0, lo_open=True)
  max_batch = _number(config, 'train.max_batch_size', 1, integer=True)
  micro = _number(config, 'train.microbatch_size', 1, integer=True)
  _check(max_batch >= batch, 'train.max_batch_size', max_batch,
         f'an integer >= train.batch_size ({batch})')
  _check(max_batch % micro == 0, 'train.microbatch_size', micro,
         f'a divisor of train.max_batch_size ({max_batch})')
  sched = _choice(config, 'train.batch_schedule', ('constant', 'linear_ramp'))
  if sched == 'linear_ramp':
    start = _number(config, 'train.batch_schedule_start', 0, max_batch,
                    lo_open=True)
    _number(config, 'train.batch_schedule_ramp_steps', 0, integer=True)
    _check(_get(config, 'dp.sampling') == 'poisson', 'train.batch_schedule',
           sched, "'constant' under dp.sampling='shuffle'")
    del start
  if _get(config, 'dp.sampling') == 'shuffle':
    _check(float(batch).is_integer() and max_batch == batch,
           'train.max_batch_size', max_batch,
           'equal to the integer train.batch_size under dp.sampling=shuffle')
  _choice(config, 'train.optimizer', ('adamw', 'adam', 'sgd'))
  _number(config, 'train.learning_rate', 0, lo_open=True)
  _number(config, 'train.warmup_steps', 0, integer=True)
  _number(config, 'train.b1', 0, 1, hi_open=True)
  _number(config, 'train.b2', 0, 1, hi_open=True)
  _number(config, 'train.eps', 0)
  _number(config, 'train.weight_decay', 0)
  _number(config, 'train.momentum', 0, 1, hi_open=True)
  _number(config, 'train.ema_decay', 0, 1, hi_open=True)
  _choice(config, 'train.grad_engine', ('vmap', 'bookkeeping', 'auto'))
  _choice(config, 'train.bookkeeping_method', ('auto', 'gram', 'instantiate'))
  style = _choice(config, 'train.clip_style',
                  ('flat', 'per_layer', 'automatic'))
  _number(config, 'train.automatic_clip_gamma', 0, lo_open=True)
  _check(not (style != 'flat' and _get(config, 'dp_adam_ac.enabled')),
         'train.clip_style', style, "'flat' with dp_adam_ac.enabled (its "
         'adaptive clip norm and clip count are for one flat norm)')
  v = _get(config, 'train.skip_padding_microbatches')
  _check(isinstance(v, bool), 'train.skip_padding_microbatches', v,
         'True or False')
  v = _get(config, 'train.log_nonprivate_stats')
  _check(isinstance(v, bool), 'train.log_nonprivate_stats', v, 'True or False')
  for f in ('log_every', 'eval_every', 'checkpoint_every'):
    _number(config, f'train.{f}', 1, integer=True)
  _number(config, 'train.evals_during_run', 0, integer=True)
  _number(config, 'train.eval_records_during_run', 0, integer=True)
  v = _get(config, 'train.eval_ema_during_run')
  _check(isinstance(v, bool), 'train.eval_ema_during_run', v, 'True or False')
  _number(config, 'train.keep_checkpoints', 1, integer=True)
  del steps

  for axis in ('data', 'model'):
    v = _get(config, f'mesh.{axis}')
    _check(isinstance(v, int) and (v == -1 or v >= 1), f'mesh.{axis}', v,
           '-1 (all remaining devices) or a positive integer')
  v = _get(config, 'mesh.param_sharding')
  _check(v in ('replicated', 'fsdp'), 'mesh.param_sharding', v,
         "'replicated' or 'fsdp'")
  v = _get(config, 'mesh.fsdp_min_size')
  _check(isinstance(v, int) and v >= 1, 'mesh.fsdp_min_size', v,
         'a positive integer (elements)')
  for fmt in _get(config, 'export.formats'):
    _check(fmt in ('hf', 'gguf'), 'export.formats', fmt, "'hf' or 'gguf'")
  v = _get(config, 'export.gguf_dtype')
  _check(v in ('f32', 'f16', 'q8_0'), 'export.gguf_dtype', v,
         "'f32', 'f16' or 'q8_0'")
  v = _get(config, 'export.name')
  _check(isinstance(v, str), 'export.name', v, 'a string')
  for f in ('plot', 'tensorboard'):
    v = _get(config, f)
    _check(isinstance(v, bool), f, v, 'True or False')
  _validate_user_level(config)
  _validate_audit(config)


def _validate_audit(config) -> None:
  """`config.audit`: the black-box canary audit (`dpjax.audit.blackbox`)."""
  for f in ('enabled', 'export_with_canaries'):
    v = _get(config, f'audit.{f}')
    _check(isinstance(v, bool), f'audit.{f}', v, 'True or False')
  if not _get(config, 'audit.enabled'):
    return
  _number(config, 'audit.canaries', 2, integer=True)
  seq_len = _get(config, 'data.seq_len')
  _number(config, 'audit.canary_tokens', 2, seq_len + 1, integer=True)
  _number(config, 'audit.alpha', 0, 1, lo_open=True, hi_open=True)
  task = _get(config, 'data.task')
  _check(task in ('lm', 'instruction'), 'audit.enabled', True,
         f"False with data.task={task!r}: the canaries are random token "
         "sequences scored by a causal LM's loss (data.task 'lm' or "
         "'instruction')")
  sampling = _get(config, 'dp.sampling')
  _check(sampling == 'poisson', 'audit.enabled', True,
         f"False with dp.sampling={sampling!r}: each canary must be sampled "
         "like a record at rate q ('poisson')")
  user = config.data.get('user_field', '')
  _check(not user, 'audit.enabled', True,
         f'False with data.user_field={user!r}: the canaries are records, '
         'not users (a user-level audit is not implemented)')


def _validate_user_level(config) -> None:
  """User-level DP (data.user_field set): ULS or ELS and what they allow."""
  mode = _choice(config, 'dp.user_sampling', ('uls', 'els'))
  if not config.data.get('user_field', ''):
    return
  _number(config, 'data.max_records_per_user', 1, integer=True)
  _check(_get(config, 'dp.sampling') == 'poisson', 'dp.sampling',
         _get(config, 'dp.sampling'),
         "'poisson' with data.user_field (users or records are "
         'Poisson-sampled)')
  _check(_get(config, 'peft.mode') != 'rgp', 'peft.mode', 'rgp',
         "'full', 'lora', 'bias_only' or 'norms' with data.user_field "
         '(user-level RGP is not implemented)')
  if mode == 'els':
    _check(_get(config, 'dp.mechanism') == 'gaussian', 'dp.mechanism',
           _get(config, 'dp.mechanism'), "'gaussian' with "
           "dp.user_sampling='els' (its group accounting is for Gaussian "
           'noise)')
    _check(not _get(config, 'dp_adam_ac.enabled'), 'dp_adam_ac.enabled',
           True, "False with dp.user_sampling='els' (its count noise "
           "assumes one record per unit; use 'uls')")
    _check(_get(config, 'dp.accountant') != 'edgeworth', 'dp.accountant',
           'edgeworth', "'pld' or 'rdp' with dp.user_sampling='els'")


def _name(config, field: str) -> str:
  v = _get(config, field)
  _check(isinstance(v, str) and v.strip() == v and v != '', field, v,
         'a non-empty field (column) name without surrounding spaces')
  return v


def _validate_files(config, task: str) -> None:
  """`data.corpus='files'`: the path, format, fields and held-out split."""
  path = _get(config, 'data.path')
  _check(isinstance(path, str) and path != '', 'data.path', path,
         'a .jsonl/.json (JSON lines), .csv or .tsv file or a folder of .txt '
         'files')
  fmt = _choice(config, 'data.format',
                ('', 'jsonl', 'csv', 'tsv', 'text_folder'))
  _check(task in ('lm', 'instruction', 'classification'), 'data.task', task,
         "'lm', 'instruction' or 'classification' for data.corpus='files'")
  names = {'lm': ('text_field',), 'instruction': ('prompt_field',
                                                   'response_field'),
           'classification': ('text_field', 'label_field')}[task]
  read = [_name(config, f'data.{n}') for n in names]
  user = _get(config, 'data.user_field')
  _check(isinstance(user, str) and user.strip() == user, 'data.user_field',
         user, "'' (record level) or a field (column) name")
  fields = read + ([user] if user else [])
  _check(len(set(fields)) == len(fields), f'data.{names[-1]}', fields,
         'distinct field names (' + ', '.join(
             f'data.{n}' for n in names + (('user_field',) if user else ()))
         + ')')
  if fmt == 'text_folder':
    _check(task == 'lm', 'data.task', task,
           "'lm' for data.format='text_folder' (one plain text per file)")
    _check(not user, 'data.user_field', user,
           "'' for data.format='text_folder' (files have no fields)")
  if task == 'classification':
    labels = tuple(_get(config, 'data.label_names'))
    _check(len(labels) >= 2 and len(set(labels)) == len(labels) and
           all(isinstance(l, str) and l.strip() for l in labels),
           'data.label_names', labels,
           '>= 2 distinct class names, fixed in the config (public: the '
           'label set is not read from the data); a label in the file is '
           'a name or its index 0..K-1')
    _check(_get(config, 'data.tokenizer') == 'model', 'data.tokenizer',
           _get(config, 'data.tokenizer'),
           "'model' for data.task='classification' (the encoder's own)")
    _number(config, 'data.seq_len', 3, integer=True)
  held = _get(config, 'data.heldout_path')
  _check(isinstance(held, str), 'data.heldout_path', held,
         "'' (split data.path) or a file or folder like data.path")
  if not held:
    _number(config, 'data.heldout_fraction', 0, 1, lo_open=True,
            hi_open=True)


def _validate_lmo(config) -> None:
  """The LMO mechanism's fields and the features it cannot combine with."""
  from dpjax.accounting import lmo  # pylint: disable=g-import-not-at-top
  _check(_get(config, 'dp.sampling') == 'poisson', 'dp.sampling',
         _get(config, 'dp.sampling'),
         "'poisson' with dp.mechanism='lmo' (the LMO accounting is proven "
         'for Poisson sampling under add/remove only)')
  _check(not _get(config, 'dp_adam_ac.enabled'), 'dp_adam_ac.enabled', True,
         "False with dp.mechanism='lmo' (adaptive clipping is accounted as "
         'one Gaussian mechanism)')
  _number(config, 'dp.l1_clip_norm', 0, lo_open=True)
  faithful = _get(config, 'dp.lmo_paper_faithful_not_private')
  _check(isinstance(faithful, bool), 'dp.lmo_paper_faithful_not_private',
         faithful, 'True or False')
  fields = ('a1', 'k', 'theta', 'a3', 'lam', 'a4', 'u_a', 'u_b')
  given = dict(_get(config, 'dp.lmo'))
  _check(set(given) == set(fields), 'dp.lmo', sorted(given),
         f'exactly the fields {fields}')
  try:
    lmo.LMOParams(**{k: float(v) for k, v in given.items()})
  except (TypeError, ValueError) as e:
    raise ConfigError('dp.lmo', str(e), 'a1, a3, a4, u_a >= 0; k, theta, '
                      'lam > 0; u_b >= u_a; a positive mean inverse scale '
                      '(search with python -m dpjax.lmo_search)') from e


def validate_against_data(config, dataset_size: int, *, unit: str = 'records',
                          n_privacy_units: int | None = None) -> None:
  """Checks that need the dataset size N.

  Args:
    config: the run's config.
    dataset_size: N of the sampling rate (records, or users under ULS).
    unit: what `dataset_size` counts, for messages ('records' or 'users').
    n_privacy_units: the number of privacy units (users when the unit is a
      user) that delta is checked against; default `dataset_size`.
  """
  batch = config.train.batch_size
  if dataset_size < 1:
    raise ConfigError('data', 'the training set is empty',
                      'a corpus with at least one record')
  _check(batch <= dataset_size, 'train.batch_size', batch,
         f'at most the number of training {unit} ({dataset_size})')
  if config.dp.enabled:
    n = n_privacy_units or dataset_size
    kind = 'users' if n_privacy_units is not None else unit
    delta = config.dp.delta
    _check(delta < 1.0 / n, 'dp.delta', delta,
           f'below 1/N = {1.0 / n:.3g} for N = {n} {kind} (a larger delta '
           f'permits releasing a {kind[:-1]} outright)')
