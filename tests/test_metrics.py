"""Tests for dpjax.metrics and dpjax.console's progress line: metrics lines,
TensorBoard tags, the progress line and the plot."""

import json
import os

import pytest

from dpjax import console
from dpjax import metrics

CONTEXT = {'epsilon_delta': 1e-5, 'sampling': 'poisson',
           'neighbouring': 'add_remove'}
NOT_PRIVATE = 'NOT PRIVATE: dp_adam_ac.nonprivate_percentile_clipping=True'
INSECURE = ('INSECURE FIXED RANDOMNESS: dp.insecure_fixed_randomness_seed=0; '
            'the guarantee holds only against parties who do not know that '
            'seed')


def _bound(**kw):
  """An eps_record as train.py writes it for a PLD-accounted run."""
  return dict(CONTEXT, epsilon=3.1, epsilon_accountant='pld',
              epsilon_kind='upper bound', privacy_warnings=[], **kw)


def _estimate(warnings=(), epsilon=2.9, bound=3.4):
  """An eps_record of a run accounted with the Edgeworth estimate."""
  return dict(CONTEXT, epsilon=epsilon, epsilon_accountant='edgeworth',
              epsilon_kind='estimate', epsilon_upper_bound=bound,
              epsilon_upper_bound_accountant='pld',
              privacy_warnings=list(warnings))


def _progress(start=0):
  """A progress line maker on a fake clock: 2 s per call."""
  t = iter(range(0, 1000, 2))
  return console.Progress(6, start, clock=lambda: next(t))


def test_progress_line_of_an_upper_bound(capsys):
  line = _progress().line(4, _bound(), heldout=(3, 5.12))
  assert line.startswith('step 4/6  2 steps/s (incl. start-up)  ETA 1s  '
                         'eps so far 3.100 (pld '
                         'upper bound, delta=1e-05, poisson, add_remove)  '
                         'held-out loss 5.1200 (step 3)')
  assert 'ESTIMATE' not in line and '[' not in line
  assert 'private' not in line
  on_subset = _progress().line(4, _bound(), heldout=(4, 4.0168, 32))
  assert on_subset.endswith('held-out loss 4.0168 (step 4, 32 records)')
  console.Console().progress(line)
  assert capsys.readouterr().out == line + '\n'  # printed once


def test_progress_line_of_an_estimate_shows_the_bound_beside_it():
  line = _progress().line(4, _estimate())
  assert ('eps so far 2.900 (edgeworth ESTIMATE, not a bound; pld upper '
          'bound 3.400, delta=1e-05, poisson, add_remove)') in line
  assert 'held-out' not in line  # none yet


def test_private_statistics_are_labelled_not_covered():
  line = _progress().line(4, _bound(), private={'train_loss': 1.25})
  assert line.endswith('private batch: train_loss 1.25 (NOT covered by eps)')


def test_an_estimate_is_never_shown_without_its_bound():
  rec = _estimate()
  del rec['epsilon_upper_bound']
  with pytest.raises(ValueError, match='epsilon_upper_bound'):
    _progress().line(4, rec)
  with pytest.raises(ValueError, match='epsilon_kind'):
    _progress().line(4, _bound() | {'epsilon_kind': 'bound'})


def test_warnings_come_first_in_brackets():
  line = _progress(2).line(4, _estimate([NOT_PRIVATE, INSECURE]))
  assert line.startswith(f'[{NOT_PRIVATE}] [{INSECURE}] step 4/6  ')
  assert 'eps so far 2.900 (edgeworth ESTIMATE' in line
  # No warnings, no brackets.
  assert not _progress(2).line(4, _bound()).startswith('[')


def test_non_private_run_says_so():
  rec = dict(CONTEXT, epsilon=float('inf'),
             epsilon_accountant='none (non-private)',
             epsilon_kind='none (non-private)',
             privacy_warnings=['NOT PRIVATE: dp.enabled=False'])
  line = _progress().line(1, rec)
  assert line.startswith('[NOT PRIVATE: dp.enabled=False] step 1/6')
  assert 'eps so far inf (NOT PRIVATE: no guarantee)' in line
  assert metrics.tensorboard_scalars(dict(rec, step=1)) == {}


def test_steps_per_second_leave_out_the_first_line():
  t = iter([0.0, 10.0, 12.0])
  p = console.Progress(6, 0, clock=lambda: next(t))
  # At t = 10: compilation too, and the line says so.
  assert '0.2 steps/s (incl. start-up)  ETA 20s' in p.line(2, _bound())
  line = p.line(4, _bound())
  assert '1 steps/s  ETA 2s' in line  # 2 steps in the 2 s since then


def test_tensorboard_tags():
  rec = dict(_estimate(), step=3, clip_norm=1.0, learning_rate=0.01,
             eval_loss=4.5, eval_subset_loss=4.6, eval_subset_records=8,
             train_loss=3.0)
  tags = metrics.tensorboard_scalars(rec)
  assert tags == {
      'privacy/epsilon_edgeworth_ESTIMATE': 2.9,
      'privacy/epsilon_pld_upper_bound': 3.4,
      'train/clip_norm': 1.0, 'train/learning_rate': 0.01,
      'heldout/loss': 4.5, 'heldout_subset/loss': 4.6,
      'private_batches_NOT_covered_by_epsilon/train_loss': 3.0}


def test_eps_record_round_trips_through_metrics_jsonl(tmp_path):
  path = str(tmp_path / 'm' / 'metrics.jsonl')
  writer = metrics.MetricsWriter(path)
  rec = _estimate([INSECURE])
  writer.write(2, dict({'clip_norm': 1.0}, **rec))
  writer.close()
  (line,) = metrics.read_metrics(path)
  assert line['step'] == 2 and line['epsilon_kind'] == 'estimate'
  assert line['epsilon_upper_bound'] == 3.4
  assert line['epsilon_upper_bound_accountant'] == 'pld'
  assert line['privacy_warnings'][0].startswith('INSECURE FIXED RANDOMNESS')
  assert 'pld upper bound 3.400' in metrics.describe_epsilon(line)
  # A non-finite bound is written as the string 'inf' and read back as such.
  writer = metrics.MetricsWriter(path, resume_step=2)
  writer.write(3, _estimate(bound=float('inf')))
  writer.close()
  last = metrics.read_metrics(path)[-1]
  assert last['epsilon_upper_bound'] == 'inf'
  assert 'pld upper bound inf' in metrics.describe_epsilon(last)


def _write_run(path, recs):
  with open(path, 'w', encoding='utf-8') as f:
    for r in recs:
      f.write(json.dumps(r) + '\n')


def test_plot_labels_an_estimate_and_draws_its_bound(tmp_path):
  warn = ['NOT PRIVATE: dp.lmo_paper_faithful_not_private=True']
  recs = [{'step': 0, 'eval_loss': 5.0}]
  recs += [dict(_estimate(warn, epsilon=0.5 * s, bound=0.7 * s), step=s)
           for s in (1, 2, 3)]
  curves = metrics.epsilon_curves(recs)
  assert [c[0] for c in curves] == ['edgeworth ESTIMATE (not a bound)',
                                    'pld upper bound']
  assert curves[1][1] == [1, 2, 3] and curves[1][2] == pytest.approx(
      [0.7, 1.4, 2.1])
  assert metrics.plot_title(recs) == warn[0]
  path = str(tmp_path / 'metrics.jsonl')
  _write_run(path, recs)
  out = str(tmp_path / 'training.png')
  metrics.plot_run(path, out)
  assert os.path.getsize(out) > 1000


def test_plot_labels_an_upper_bound_alone():
  recs = [dict(_bound(), step=1)]
  assert [c[0] for c in metrics.epsilon_curves(recs)] == ['pld upper bound']
  assert metrics.plot_title(recs) == ''
