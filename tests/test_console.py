"""The console of a run (dpjax.console): one line per event, printed once;
library logs in workdir/dpjax.log; TensorBoard scalars beside metrics.jsonl."""

import glob
import io
import logging
import os
import re
import struct
import subprocess
import sys
import types

import pytest

from configs import debug
from dpjax import configuration
from dpjax import console
from dpjax import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRIVATE = metrics.PRIVATE_TAG
INFO_LINE = re.compile(r'^I\d{4} \d\d:\d\d:\d\d')  # absl's INFO format


def read_events(logdir):
  """{tag: [(step, value)]} of the TensorBoard event files under `logdir`
  (TFRecord framing: length, crc, Event proto, crc)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  tags = {}
  files = sorted(glob.glob(os.path.join(logdir, 'events.out.tfevents.*')))
  assert files, f'no event files in {logdir}'
  for path in files:
    with open(path, 'rb') as f:
      data = f.read()
    i = 0
    while i < len(data):
      (n,) = struct.unpack('<Q', data[i:i + 8])
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
      i += 12 + n + 4
      for v in event.summary.value:
        tags.setdefault(v.tag, []).append((event.step, v.simple_value))
  return tags


@pytest.fixture(scope='module')
def debug_run(tmp_path_factory):
  """The debug run as a person launches it (python -m dpjax.main)."""
  workdir = str(tmp_path_factory.mktemp('console') / 'run')
  proc = subprocess.run(
      [sys.executable, '-m', 'dpjax.main', '--config=configs/debug.py',
       f'--workdir={workdir}'], cwd=ROOT, capture_output=True, text=True,
      timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc.stdout, proc.stderr


def test_console_has_no_library_info_lines(debug_run):
  _, out, err = debug_run
  for line in (out + err).splitlines():
    assert not INFO_LINE.match(line), line  # a library's INFO record
    assert 'orbax' not in line.lower() and 'libtpu' not in line, line
  # Warnings may reach stderr (none in the debug run on a CPU); the run's
  # own lines are on stdout alone.
  assert not any(l.startswith(('start ', 'step ', 'eval ', 'done '))
                 for l in err.splitlines())


def test_each_event_is_printed_once(debug_run):
  workdir, out, _ = debug_run
  lines = out.splitlines()
  progress = [l for l in lines if l.startswith('step ')]
  assert [l.split()[1] for l in progress] == ['2/6', '4/6', '6/6']
  for line in progress:
    assert lines.count(line) == 1
    assert 'steps/s' in line and 'ETA' in line
    assert 'eps so far' in line and 'pld upper bound' in line
    assert re.search(r'held-out loss \d\.\d{4} \(step \d, \d+ records\)', line)
    assert 'private batch' not in line  # train.log_nonprivate_stats=False
  (start,) = [l for l in lines if l.startswith('start ')]
  for part in ('llama (random init)', '35,104 of 35,104 parameters',
               'N=512 records', 'q=0.03125', 'sigma=0.446', 'C=1',
               'delta=1e-05', 'target eps=8 (pld)', '6 steps'):
    assert part in start, part
  evals = [l for l in lines if l.startswith('eval ')]
  assert len(evals) >= 5  # step 0 and at least four during the run
  (end,) = [l for l in lines if l.startswith('done ')]
  assert re.search(r'eps [78]\.\d{3} \(pld upper bound', end), end
  assert re.search(r'held-out loss \d\.\d{4} -> \d\.\d{4}', end), end
  for name in ('privacy_report.txt', 'metrics.jsonl', 'training.png',
               'tensorboard/', 'dpjax.log'):
    assert name in end, name
  assert lines.index(start) < lines.index(progress[0]) < lines.index(end)
  # The privacy block: every accountant's row, then where the rest is; the
  # whole report (threat model, mechanism) stays in its file.
  (where,) = [i for i, l in enumerate(lines) if l.startswith('The whole report')]
  assert where < lines.index(end)
  assert lines[where].endswith(os.path.join(workdir, 'privacy_report.txt'))
  for acc in ('pld', 'rdp', 'edgeworth'):
    assert any(l.startswith(f'  {acc} ') for l in lines[:where]), acc
  assert 'Threat model:' not in out and 'Threat model:' in open(
      os.path.join(workdir, 'privacy_report.txt')).read()


def test_log_file_holds_the_library_lines(debug_run):
  workdir, out, _ = debug_run
  with open(os.path.join(workdir, console.LOG_FILE), encoding='utf-8') as f:
    log = f.read()
  assert 'checkpoint_manager.py' in log  # orbax's INFO lines
  assert 'Model llama: 35104 parameters' in log
  # The console's lines are copied there (each once).
  progress = [l for l in out.splitlines() if l.startswith('step ')]
  for line in progress:
    assert log.count(line) == 1


def test_event_files_hold_the_scalars(debug_run):
  workdir, _, _ = debug_run
  tags = read_events(os.path.join(workdir, 'tensorboard'))
  steps = [s for s, _ in tags['heldout/loss']]
  assert len(steps) >= 5 and steps[0] == 0 and steps[-1] == 6
  assert len(tags['heldout/loss_ema']) == len(steps)
  eps = tags['privacy/epsilon_pld_upper_bound']
  assert [s for s, _ in eps] == [0, 2, 4, 6]
  assert 7.0 < eps[-1][1] <= 8.0 + 1e-4
  assert [s for s, _ in tags['train/clip_norm']] == [2, 4, 6]
  assert tags['train/learning_rate'][-1][1] == pytest.approx(3e-3)
  assert not any(t.startswith(PRIVATE) for t in tags)
  # The same numbers as metrics.jsonl.
  recs = metrics.read_metrics(os.path.join(workdir, 'metrics.jsonl'))
  losses = [(r['step'], r['eval_loss']) for r in recs if 'eval_loss' in r]
  assert [s for s, _ in losses] == steps
  assert [v for _, v in losses] == pytest.approx(
      [v for _, v in tags['heldout/loss']], rel=1e-6)


@pytest.mark.slow  # 27 s
def test_private_statistics_and_a_subset_during_the_run(tmp_path, capsys):
  from dpjax import train  # pylint: disable=g-import-not-at-top
  config = debug.get_config()
  config.train.update(steps=4, log_every=1, log_nonprivate_stats=True,
                      eval_records_during_run=8, eval_ema_during_run=False,
                      checkpoint_every=4)
  config.data.eval_batch_size = 8
  config.plot = False
  out = train.train_and_evaluate(config, str(tmp_path))
  lines = capsys.readouterr().out.splitlines()
  progress = [l for l in lines if l.startswith('step ')]
  assert len(progress) == 4 and len(set(progress)) == 4
  assert all('private batch: train_loss' in l and 'NOT covered by eps' in l
             for l in progress)
  tags = read_events(str(tmp_path / 'tensorboard'))
  assert [s for s, _ in tags[f'{PRIVATE}/train_loss']] == [1, 2, 3, 4]
  # The whole held-out set at step 0 and the end, the first 8 records at
  # every evaluation (the same pass at the ends): one consistent curve.
  assert [s for s, _ in tags['heldout/loss']] == [0, 4]
  assert [s for s, _ in tags['heldout_subset/loss']] == [0, 1, 2, 3, 4]
  # The EMA weights at the ends alone (train.eval_ema_during_run=False).
  assert [s for s, _ in tags['heldout_subset/loss_ema']] == [0, 4]
  evals = [l for l in lines if l.startswith('eval ')]
  assert 'on 8 of 32 held-out records' in evals[1]
  assert 'on 32 held-out records (first 8: ' in evals[-1]
  # The report's held-out figures are the whole set's.
  assert out['final']['eval_loss'] == pytest.approx(tags['heldout/loss'][-1][1])
  assert 'eval_subset_loss' not in out['report']['evaluation']


def test_evaluation_lines(capsys):
  c = console.Console()
  sub = {'eval_subset_loss': 4.1, 'eval_subset_accuracy': 0.3,
         'eval_subset_records': 32}
  assert c.evaluation(2, 4, sub, 64) == (
      'eval  step 2/4  held-out loss 4.1000  accuracy 0.300  on 32 of 64 '
      'held-out records')
  whole = {'eval_loss': 4.0, 'eval_accuracy': 0.25, 'eval_loss_ema': 4.2,
           'eval_accuracy_ema': 0.2}
  assert c.evaluation(4, 4, dict(whole, **sub), 64) == (
      'eval  step 4/4  held-out loss 4.0000 (EMA 4.2000)  accuracy 0.250 '
      '(EMA 0.200)  on 64 held-out records (first 32: 4.1000)')
  assert len(capsys.readouterr().out.splitlines()) == 2


def test_evaluation_steps():
  from dpjax import train  # pylint: disable=g-import-not-at-top
  assert sorted(train.evaluation_steps(6, 3, 4)) == [2, 3, 5, 6]
  assert sorted(train.evaluation_steps(8, 8, 4)) == [2, 4, 6, 8]
  assert sorted(train.evaluation_steps(100, 50, 4)) == [25, 50, 75, 100]
  assert sorted(train.evaluation_steps(2, 10, 4)) == [1, 2]
  assert sorted(train.evaluation_steps(6, 3, 0)) == [3, 6]


@pytest.mark.parametrize('field,value', [
    ('train.evals_during_run', -1), ('train.evals_during_run', 1.5),
    ('train.eval_records_during_run', -2), ('tensorboard', 'yes'),
    ('train.eval_ema_during_run', 1)])
def test_new_fields_are_validated(field, value):
  import ml_collections  # pylint: disable=g-import-not-at-top
  tree = debug.get_config().to_dict()
  node = tree
  *path, last = field.split('.')
  for p in path:
    node = node[p]
  node[last] = value  # as a config file may write it (any type)
  config = ml_collections.ConfigDict(tree)
  with pytest.raises(configuration.ConfigError, match=re.escape(field)):
    configuration.validate(config)


@pytest.fixture
def root_handlers():
  root = logging.getLogger()
  saved, level = list(root.handlers), root.level
  yield
  for h in list(root.handlers):
    if h not in saved:
      root.removeHandler(h)
      h.close()
  ours = console._ConsoleFilter  # pylint: disable=protected-access
  for h in saved:
    for f in [f for f in h.filters if isinstance(f, ours)]:
      h.removeFilter(f)
  root.setLevel(level)


@pytest.mark.parametrize('verbose', [False, True])
def test_logging_rule(tmp_path, root_handlers, verbose):
  del root_handlers
  stream = io.StringIO()
  handler = logging.StreamHandler(sys.stderr)
  handler.setStream(stream)  # setup_logging finds stderr handlers...
  handler.stream = sys.stderr
  logging.getLogger().addHandler(handler)
  path = console.setup_logging(str(tmp_path), verbose=verbose,
                               process_index=lambda: 0)
  handler.stream = stream  # ...and the test reads this one
  lib = logging.getLogger('orbax.fake')
  lib.info('library info line')
  lib.warning('library warning line')
  owner = logging.LogRecord('absl', logging.INFO, os.path.join(
      ROOT, 'dpjax', 'input_pipeline.py'), 1, 'data: 7 records read', None,
                            None)
  logging.getLogger('absl').handle(owner)
  console.Console().emit('start  a console line')
  shown = stream.getvalue()
  assert 'library warning line' in shown
  assert ('library info line' in shown) == verbose
  assert 'data: 7 records read' in shown  # for the data owner
  assert 'a console line' not in shown  # printed on stdout, not logged twice
  with open(path, encoding='utf-8') as f:
    log = f.read()
  assert 'library info line' in log and 'library warning line' in log
  assert 'start  a console line' in log
  assert 'records read' not in log  # private-data counts: console only
  assert os.path.basename(path) == 'dpjax.log'


def test_verbose_requested():
  def flags(present=0, logtostderr=False, also=False):
    return {'verbosity': types.SimpleNamespace(present=present, value=0),
            'logtostderr': types.SimpleNamespace(value=logtostderr),
            'alsologtostderr': types.SimpleNamespace(value=also)}
  assert not console.verbose_requested(flags())
  assert console.verbose_requested(flags(present=1))
  assert console.verbose_requested(flags(logtostderr=True))
  assert console.verbose_requested(flags(also=True))


def test_other_processes_write_no_log_file(tmp_path, root_handlers):
  del root_handlers
  assert console.setup_logging(str(tmp_path / 'w'), process_index=3) is None
  assert not (tmp_path / 'w').exists()


def test_a_refused_run_leaves_no_work_directory(tmp_path, root_handlers):
  del root_handlers
  fresh = tmp_path / 'fresh'
  console.setup_logging(str(fresh), process_index=0)
  logging.getLogger('orbax.fake').info('a line')
  assert (fresh / 'dpjax.log').exists()
  assert console.discard_log(str(fresh))
  assert not fresh.exists()
  assert not any(getattr(h, '_dpjax_log', False)
                 for h in logging.getLogger().handlers)
  kept = tmp_path / 'kept'  # something else there: nothing is removed
  console.setup_logging(str(kept), process_index=0)
  (kept / 'metrics.jsonl').write_text('{}\n')
  assert not console.discard_log(str(kept))
  assert (kept / 'dpjax.log').exists() and (kept / 'metrics.jsonl').exists()
