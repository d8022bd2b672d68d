"""The end-of-run privacy report (JSON and readable text), from the ledger.

Every epsilon in it names its accountant, delta, sampling scheme and
neighbouring relation, and is labelled 'upper bound' or 'estimate'; a report
with no upper bound is refused. It states where the secret randomness came
from (an insecure fixed seed is said in its first lines), what else the run
releases, and its threat model: what epsilon covers and what it does not.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from dpjax import configuration
from dpjax import randomness
from dpjax.accounting import report as acc_report


RANDOMNESS_SOURCES = ('os_entropy', 'insecure_fixed_seed')
CANARY_LABEL = ('empirical, NOT covered by epsilon: computed from the trained '
                'weights and the private canary records')


def _check_randomness(randomness: dict[str, Any] | None) -> None:
  if randomness is None:
    return
  source = randomness.get('source')
  if source not in RANDOMNESS_SOURCES:
    raise ValueError(f"randomness['source'] must be one of "
                     f'{RANDOMNESS_SOURCES}, got {source!r}.')
  seed = randomness.get('insecure_fixed_randomness_seed')
  if source == 'insecure_fixed_seed' and not (
      isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0):
    raise ValueError("randomness['insecure_fixed_randomness_seed'] must be "
                     "an integer >= 0 when source is 'insecure_fixed_seed', "
                     f'got {seed!r}.')


def insecure_seed_warning(seed: int) -> str:
  """The first line of every report of a run on an insecure fixed seed."""
  return (randomness.insecure_seed_warning(seed) + '. The noise, sampling '
          'and dropout were derived from this seed: anyone who has the '
          'config can remove the noise.')


def _overflow_probability(plan, sampler) -> float | None:
  """P(a Poisson draw exceeds max_batch_size) at the largest q_t (public)."""
  if plan.sampling != 'poisson' or not hasattr(sampler, 'max_batch_size'):
    return None
  from scipy import stats  # pylint: disable=g-import-not-at-top
  sizes = plan.batch_schedule or (plan.expected_batch_size,)
  q = min(1.0, max(sizes) / plan.dataset_size)
  return float(stats.binom.sf(sampler.max_batch_size, plan.dataset_size, q))


def _n_label(plan) -> str:
  """What N counts: 'dataset size', or the users / capped records."""
  if getattr(plan, 'unit_kind', 'record') != 'user':
    return 'dataset size'
  if plan.user_sampling == 'uls':
    return 'number of users'
  return f'number of records kept (at most {plan.records_per_user} per user)'


def _unit_fields(plan, clip_ord: int) -> dict[str, Any]:
  """What the batch, N and the clipping count for a user-level run."""
  if getattr(plan, 'unit_kind', 'record') != 'user':
    return {'sampled_unit': 'record'}
  k = plan.records_per_user
  if plan.user_sampling == 'uls':
    return {'sampled_unit': 'user (ULS: user-level sampling)',
            'expected_batch_size_counts': 'users per step',
            'dataset_size_counts': 'users',
            'clipping': (f'flat per-user L{clip_ord}: the gradients of up '
                         f'to {k} of the user\'s records are averaged, then '
                         f'clipped as one contribution')}
  return {'sampled_unit': 'record (ELS: example-level sampling)',
          'expected_batch_size_counts': 'records per step',
          'dataset_size_counts': f'records kept, at most {k} per user',
          'ledger_phases': (f'each step is recorded as the user-level '
                            f'mechanism: rate 1 - (1 - q)^{k}, multiplier '
                            f'noise_multiplier / {k}')}


def threat_model(plan, *, randomness: dict[str, Any] | None = None,
                 skip_padding_microbatches: bool = False,
                 overflow_probability: float | None = None
                 ) -> dict[str, Any]:
  """What epsilon covers and what it does not, for this run.

  Args:
    plan: the run's PrivacyPlan (public parameters).
    randomness: as `build_report` takes it.
    skip_padding_microbatches: config.train.skip_padding_microbatches.
    overflow_probability: the public per-step probability of a Poisson
      overflow, or None.

  Returns:
    {'covers': str, 'does_not_cover': list of str}.
  """
  source = (randomness or {}).get('source')
  secret_state = (randomness or {}).get('secret_state', 'not stated')
  covers = (
      'epsilon (the upper-bound rows, at delta) bounds what the released '
      'outputs reveal about any one record (the unit named above): the '
      'trained weights (checkpoints and exports), metrics.jsonl, the progress '
      'lines, the plot and this report, against an adversary who knows the '
      'code, the config and all other training records, but not the secret '
      'randomness (the noise, Poisson sampling and dropout keys).')
  if not plan.enabled:
    covers = 'Nothing: this run is not private (epsilon = infinity).'
  gaps = []
  timing = ('Timing side channels: the step time and its pattern are not '
            'covered.')
  if plan.sampling == 'poisson':
    p = ('' if overflow_probability is None else
         f' (public probability per step: {overflow_probability:.3g})')
    timing += (' A Poisson draw larger than train.max_batch_size runs a '
               'second fixed-shape chunk and recompiles the step once, which '
               f'shows in the step time{p}.')
  if skip_padding_microbatches:
    timing += (' train.skip_padding_microbatches=True: micro-batches of '
               'padding are skipped, so the step time reveals the realised '
               '(secret) batch size.')
  gaps.append(timing)
  gaps += [
      'Floating-point attacks on the noise sampler: the noise is drawn in '
      'finite precision, not from the exact distribution accounted.',
      'The secret state at rest in workdir/secret/ (noise and sampling keys, '
      'sampler state): whoever reads it can remove the noise. This run: '
      f'{secret_state}.',
      'Several runs on the same data (including hyper-parameter searches): '
      'their epsilons compose; this report covers one run.',
      'Held-out evaluation data is treated as public: held-out losses and '
      'accuracies are released without noise.',
      f'The {_n_label(plan)} N = {plan.dataset_size} (after packing and '
      'filtering) sets q and sigma and is printed, so it is treated as '
      'public.',
      'Canary exposure and any statistic of private batches logged with '
      'train.log_nonprivate_stats=True are computed with private data and '
      'released without noise.',
      'Data-validation counts of data.corpus=\'files\' (records read, blank '
      'lines skipped, records truncated, users in both data files) are '
      'logged to the console for the data owner without noise; they never '
      'reach metrics.jsonl, this report, checkpoints or exports.',
  ]
  seed = ('The insecure fixed seed mode (dp.insecure_fixed_randomness_seed '
          '>= 0): the guarantee then holds only against parties who do not '
          'know the seed.')
  if source == 'insecure_fixed_seed':
    seed += ' THIS RUN USES IT.'
  elif source == 'os_entropy':
    seed += ' This run drew its randomness from OS entropy.'
  gaps.append(seed)
  return {'covers': covers, 'does_not_cover': gaps}


def clipping_text(clipping: dict[str, Any] | None, clip_ord: int) -> str:
  """How each example's contribution is bounded, in words."""
  style = (clipping or {}).get('style', 'flat')
  if style == 'flat':
    return f'flat per-example L{clip_ord}'
  leaves = (clipping or {}).get('num_leaves', 'L')
  if style == 'per_layer':
    bound = 'C/sqrt(L)' if clip_ord == 2 else 'C/L'
    return (f'per-layer per-example L{clip_ord}: each of the L = {leaves} '
            f'trainable leaves clipped to {bound}, so each example\'s '
            f'contribution has L{clip_ord} norm <= C')
  return (f'automatic (normalized) per-example L{clip_ord}: each gradient '
          f"scaled by C / (norm + {clipping.get('gamma')}), norm < C")


def build_report(plan, ledger, sampler, final: dict[str, Any],
                 accountants=('pld', 'rdp', 'edgeworth'),
                 extra_rows=None, mechanism_notes=None, *,
                 randomness: dict[str, Any] | None = None,
                 skip_padding_microbatches: bool = False,
                 clipping: dict[str, Any] | None = None,
                 audit: dict[str, Any] | None = None) -> dict[str, Any]:
  """The report as a dict (what `privacy_report.json` holds).

  Args:
    plan: the run's PrivacyPlan.
    ledger: the run's PrivacyLedger.
    sampler: the run's sampler (only its public max_batch_size is read).
    final: held-out evaluation; a 'canary_exposure' list in it is labelled
      empirical and not covered by epsilon.
    accountants: names or accountant objects; at least one upper bound.
    extra_rows: rows added verbatim to the privacy table.
    mechanism_notes: dict; formally_private=False puts its 'warning' first.
    randomness: {'source': 'os_entropy' | 'insecure_fixed_seed',
      'insecure_fixed_randomness_seed': int or None, 'secret_state': str}.
    skip_padding_microbatches: config.train.skip_padding_microbatches (a
      timing channel the threat model names).
    clipping: {'style': 'flat' | 'per_layer' | 'automatic', 'gamma': float,
      'num_leaves': int, 'engine': str, 'engine_reason': str}; None is flat
      with the engine not stated.
    audit: the black-box canary audit's fields
      (`dpjax.audit.blackbox.CanaryAudit.section`), or None (no audit: the
      report's 'audit' is None). The claimed epsilon, its accountant and a
      one-line interpretation are added here, from this report's rows.

  Returns:
    The report dict.

  Raises:
    ConfigError: naming dp.report_accountants when no accountant gives an
      upper bound (an estimate is never reported alone).
    ValueError: a malformed `randomness`.
  """
  _check_randomness(randomness)
  lmo = getattr(plan, 'mechanism', 'gaussian') == 'lmo'
  clip_ord = getattr(plan, 'clip_norm_ord', 2)
  overflow_p = _overflow_probability(plan, sampler)
  insecure = (randomness or {}).get('source') == 'insecure_fixed_seed'
  out: dict[str, Any] = {
      'insecure_fixed_randomness': (
          {'seed': randomness['insecure_fixed_randomness_seed'],
           'warning': insecure_seed_warning(
               randomness['insecure_fixed_randomness_seed'])}
          if insecure else None),
      'private': plan.enabled,
      'randomness': dict(randomness) if randomness else None,
      'mechanism': {
          'noise': (('lmo' if lmo else 'gaussian') if plan.enabled
                    else 'none'),
          'noise_multiplier': plan.noise_multiplier,
          'noise_multiplier_means': (
              'LMO noise scale / L1 sensitivity of the clipped sum' if lmo
              else 'noise std / L2 sensitivity of the clipped sum'),
          'clip_norm': plan.clip_norm if plan.enabled else None,
          'clipping': clipping_text(clipping, clip_ord),
          'gradient_engine': ((clipping or {}).get('engine', 'not stated') +
                              (f" ({clipping['engine_reason']})"
                               if (clipping or {}).get('engine_reason')
                               else '')),
          'sampling': plan.sampling,
          'sampling_rate_q': (plan.q if plan.batch_schedule is None else
                              'variable: q_t = B_t / N per step, see phases'),
          'expected_batch_size': plan.expected_batch_size,
          'dataset_size': plan.dataset_size,
          'steps': ledger.steps,
          'neighbouring': plan.neighbouring,
          'unit': ledger.unit,
          'calibrated_for_epsilon': plan.calibrated_for_epsilon,
          'calibration_accountant': plan.accountant,
      },
      'delta': plan.delta,
      'evaluation': dict(final),
      'threat_model': threat_model(
          plan, randomness=randomness,
          skip_padding_microbatches=skip_padding_microbatches,
          overflow_probability=overflow_p),
      'notes': [
          'Training-loss, batch-size and clip-fraction statistics are '
          'computed on private batches and are NOT privatized: they are '
          'logged only with train.log_nonprivate_stats=True, and are then '
          'not covered by epsilon.',
          f'The {_n_label(plan)} N = {plan.dataset_size} (after packing and '
          'filtering) sets q and sigma and is printed here, so it is treated '
          'as public. Make it public by fixing N from public information '
          '(e.g. data.max_train_records below the true count, or padding or '
          'trimming to a publicly known N), or account under replace-one.',
      ],
  }
  if overflow_p is not None:
    out['mechanism']['poisson_overflow_probability_per_step'] = overflow_p
  out['mechanism'].update(_unit_fields(plan, clip_ord))
  if 'canary_exposure' in final:
    out['evaluation']['canary_exposure_label'] = CANARY_LABEL
    out['notes'].append('Canary exposure is ' + CANARY_LABEL + '.')
  if mechanism_notes:
    out['mechanism_notes'] = mechanism_notes
    if 'raw' in str(mechanism_notes.get('adaptive_clipping', '')):
      out['notes'].append('The logged clip_norm follows a percentile of raw '
                          'per-example gradient norms: it is NOT privatized.')
    if mechanism_notes.get('formally_private') is False:
      out['formally_private'] = False
      out['notes'].insert(0, mechanism_notes.get('warning', 'NOT PRIVATE'))
  if plan.enabled:
    try:
      out['privacy'] = acc_report.privacy_report(
          ledger, plan.delta, accountants=tuple(accountants),
          extra_rows=extra_rows or ())
    except acc_report.NoUpperBoundError as e:
      raise configuration.ConfigError(
          'dp.report_accountants', f'{tuple(accountants)!r} gives no upper '
          f'bound on epsilon ({e})', "a list including 'pld' or 'rdp'") from e
  else:
    out['privacy'] = None
    out['notes'].append('Non-private run: no privacy guarantee (epsilon = '
                        'infinity).')
  out['audit'] = _audit_section(audit, out['privacy'])
  if audit is not None:
    out['notes'].append(
        'Audit canaries: random records, half of them (secret coins) trained '
        'on beside the real data; they are not counted in N, and the '
        'guarantee for the real records is unchanged. eps_lb is an empirical '
        'lower bound (valid at confidence 1 - alpha), not a guarantee.')
  return out


def claimed_epsilon(privacy: dict[str, Any] | None) -> tuple[float, str]:
  """(claimed epsilon, its accountant): the smallest upper-bound row of the
  report's privacy table; (inf, 'none (non-private)') without a table."""
  if not privacy:
    return math.inf, 'none (non-private)'
  rows = [r for r in privacy.get('rows', ())
          if r.get('kind') == 'upper bound' and
          isinstance(r.get('epsilon'), (int, float)) and
          not math.isnan(r['epsilon'])]
  if not rows:
    return math.inf, 'none (no upper-bound row)'
  best = min(rows, key=lambda r: r['epsilon'])
  return float(best['epsilon']), str(best['accountant'])


def audit_interpretation(eps_lb: float | None, claimed: float,
                         alpha: float) -> str:
  """One line: what the audit's eps_lb says about the claimed epsilon."""
  if eps_lb is None:
    return 'no lower bound computed.'
  if math.isinf(claimed):
    return (f'non-private run (claimed epsilon = infinity): eps_lb = '
            f'{eps_lb:.3g} measures how well the canaries can be told apart.')
  if eps_lb <= claimed:
    return (f'consistent: eps_lb {eps_lb:.3g} <= claimed epsilon '
            f'{claimed:.3g}. A black-box eps_lb far below the claim is '
            'expected (one run, loss scores, the last model) and is not '
            'evidence of privacy.')
  return (f'VIOLATION: eps_lb {eps_lb:.3g} > claimed epsilon {claimed:.3g} '
          f'at confidence {1 - alpha:.3g}: the mechanism or its accounting is '
          f'wrong, or this is the (at most {alpha:.3g} probability) false '
          'alarm.')


def _audit_section(audit: dict[str, Any] | None,
                   privacy: dict[str, Any] | None) -> dict[str, Any] | None:
  if audit is None:
    return None
  out = dict(audit)
  claimed, acc = claimed_epsilon(privacy)
  out.update(claimed_epsilon=claimed, claimed_epsilon_accountant=acc)
  out['interpretation'] = audit_interpretation(
      out.get('epsilon_lb'), claimed, float(out.get('alpha', 0.05)))
  return out


def _audit_lines(a: dict[str, Any]) -> list[str]:
  """The text report's audit lines."""
  lines = ['', 'Empirical audit (' + a['method'] + '):']
  if a.get('epsilon_lb') is None:
    lines.append('  eps_lb: ' + a.get('status', 'not computed'))
  else:
    ceiling = a.get('epsilon_lb_ceiling')
    ceil = ('' if ceiling is None else
            f" (at most {ceiling:.3g} possible with {a['num_guesses']} "
            'guesses)')
    lines.append(
        f"  eps_lb = {a['epsilon_lb']:.4g} at confidence "
        f"{a['confidence']:.3g}, delta = {a['delta']:.3g} (claimed epsilon "
        f"{a['claimed_epsilon']:.4g}, {a['claimed_epsilon_accountant']}); "
        f"{a['num_correct']} of {a['num_guesses']} guesses correct{ceil}")
  lines += [f"  canaries: m = {a['num_canaries']}, {a['num_included']} "
            f"included, {a['canary_tokens']} random tokens each; "
            + a['ledger'],
            '  ' + a['interpretation'],
            '  export: ' + a['export']]
  return lines


def _exposure_line(item) -> str:
  """One canary's exposure: the measured (rank among the scored texts) figure
  with its sampled ceiling first; the full-space figure named an
  extrapolation. Items without those fields are printed as they are."""
  keys = ('repetitions', 'exposure_rank_bits', 'sampled_ceiling_bits',
          'sampled_rank', 'sampled_candidates')
  if not (isinstance(item, dict) and all(k in item for k in keys)):
    return str(item)
  line = (f"x{item['repetitions']}: {item['exposure_rank_bits']:.2f} of "
          f"{item['sampled_ceiling_bits']:.2f} bits measured (rank "
          f"{item['sampled_rank']:g} among {item['sampled_candidates']} "
          'scored texts)')
  if 'exposure_extrapolated_bits' in item:
    line += (f"; extrapolated to |R| = {item.get('full_space_size', '?')}: "
             f"{item['exposure_extrapolated_bits']:.2f} of "
             f"{item.get('full_space_max_bits', float('nan')):.2f} bits")
    if 'exposure_extrapolated_lower95_bits' in item:
      line += (f" (95% lower bound "
               f"{item['exposure_extrapolated_lower95_bits']:.2f})")
  return line


def format_text(report: dict[str, Any]) -> str:
  """The readable report (`privacy_report.txt`)."""
  m = report['mechanism']
  lines = []
  insecure = report.get('insecure_fixed_randomness')
  if insecure:
    lines += ['*** ' + insecure['warning'] + ' ***', '']
  lines += ['dpjax privacy report', '=' * 20]
  if report.get('formally_private') is False:
    lines += ['*** ' + report['notes'][0] + ' ***', '']
  if report['private']:
    lines.append(acc_report.format_report(report['privacy']))
  else:
    lines.append('NON-PRIVATE RUN: epsilon = infinity (no guarantee).')
  rnd = report.get('randomness')
  lines += ['', 'Secret randomness (noise, sampling, dropout):']
  if rnd:
    source = {'os_entropy': '256 bits of OS entropy',
              'insecure_fixed_seed': 'INSECURE fixed seed '
              f"{rnd.get('insecure_fixed_randomness_seed')}"}[rnd['source']]
    lines += [f'  source: {source}',
              f"  secret state: {rnd.get('secret_state', 'not stated')}"]
  else:
    lines.append('  not stated by the caller')
  lines += ['', 'Mechanism:'] + [f'  {k}: {v}' for k, v in m.items()]
  for k, v in report.get('mechanism_notes', {}).items():
    lines.append(f'  {k}: {v}')
  lines += ['', 'Held-out evaluation (loss in nats per token or example):']
  ev = report['evaluation']
  for k, v in ev.items():
    if k == 'canary_exposure_label':
      continue
    if isinstance(v, list):
      label = (ev.get('canary_exposure_label', CANARY_LABEL)
               if k == 'canary_exposure' else 'empirical, not a guarantee')
      lines.append(f'  {k} ({label}):')
      lines += [f'    {_exposure_line(item)}' for item in v]
    else:
      lines.append(f'  {k}: {v}')
  if report.get('audit'):
    lines += _audit_lines(report['audit'])
  tm = report.get('threat_model')
  if tm:
    lines += ['', 'Threat model:', '  epsilon covers: ' + tm['covers'],
              '  epsilon does NOT cover:']
    lines += [f'    - {g}' for g in tm['does_not_cover']]
  lines += [''] + [f'Note: {n}' for n in report['notes']]
  return '\n'.join(lines) + '\n'


def format_summary(report: dict[str, Any], path: str) -> str:
  """The console's privacy block: the warnings, the epsilon table (every
  accountant with delta, kind, sampling, neighbouring relation and unit),
  the audit and where the whole report is (`path`, privacy_report.txt:
  randomness, mechanism, evaluation and threat model)."""
  lines = []
  insecure = report.get('insecure_fixed_randomness')
  if insecure:
    lines.append('*** ' + insecure['warning'] + ' ***')
  if report.get('formally_private') is False:
    lines.append('*** ' + report['notes'][0] + ' ***')
  if report['private']:
    lines.append(acc_report.format_report(report['privacy']))
  else:
    lines.append('NON-PRIVATE RUN: epsilon = infinity (no guarantee).')
  if report.get('audit'):
    lines += _audit_lines(report['audit'])[1:]
  lines.append(f'The whole report (randomness, mechanism, evaluation, what '
               f'epsilon does not cover): {path}')
  return '\n'.join(lines)


def write_report(workdir: str, plan, ledger, sampler, final,
                 accountants=('pld', 'rdp', 'edgeworth'),
                 extra_rows=None, mechanism_notes=None, *,
                 randomness: dict[str, Any] | None = None,
                 skip_padding_microbatches: bool = False,
                 clipping: dict[str, Any] | None = None,
                 audit: dict[str, Any] | None = None) -> dict[str, Any]:
  """Writes `privacy_report.json` and `privacy_report.txt`; returns the dict
  (the console shows `format_summary`; `dpjax report WORKDIR` prints the
  whole text).

  Arguments as in `build_report`.
  """
  report = build_report(plan, ledger, sampler, final, accountants, extra_rows,
                        mechanism_notes, randomness=randomness,
                        skip_padding_microbatches=skip_padding_microbatches,
                        clipping=clipping, audit=audit)
  _atomic_write(os.path.join(workdir, 'privacy_report.json'),
                json.dumps(report, indent=2, default=_default))
  text = format_text(report)
  _atomic_write(os.path.join(workdir, 'privacy_report.txt'), text)
  return report


def _default(o):
  if dataclasses.is_dataclass(o):
    return dataclasses.asdict(o)
  try:
    return float(o)
  except (TypeError, ValueError):
    return str(o)


def _atomic_write(path: str, text: str) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
