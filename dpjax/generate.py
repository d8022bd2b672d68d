"""`python -m dpjax.generate --workdir=DIR --prompt="..."`: sample text from a
finished (or checkpointed) run's weights.

Rebuilds the run's model from `DIR/config.json`, restores the latest
checkpoint's trainable parameters (their EMA by default) and prints each
completion (the prompt excluded) to stdout; see `dpjax.generation`.

Flags:
  --workdir=DIR          the run's work directory (required).
  --prompt=TEXT          the prompt (required; may be empty).
  --temperature=0.8      0: greedy decoding.
  --top_p=0.95           nucleus sampling mass in (0, 1]; 1: off.
  --max_tokens=64        new tokens at most (fewer if the model's positions
                         run out). No KV cache: each new token reruns the
                         model on prompt + max_tokens positions, so the cost
                         grows with the square of that length.
  --seed=0               public seed of the sampling only: the same seed
                         gives the same text.
  --weights=ema          ema (the exported weights) | raw (last iterate).
  --chat=auto            auto: the run's instruction format when it did
                         instruction tuning, else the raw prompt; on: the
                         tokenizer's chat template; off: the raw prompt.
  --num_samples=1        completions to draw; with more than one, each is
                         preceded by a line '--- sample i/n ---'.

--help prints this text. Exit code 0, or 2 with one line on stderr when the work directory holds no
run or checkpoint, the run is not a decoder LM, or a flag is out of range.
Generation is post-processing of the DP weights: no privacy cost.
"""

from __future__ import annotations

import sys

from absl import flags

from dpjax import cli_flags

USAGE = ('usage: python -m dpjax.generate --workdir=DIR --prompt=TEXT '
         '[--temperature=0.8] [--top_p=0.95] [--max_tokens=64] [--seed=0] '
         '[--weights=ema|raw] [--chat=auto|on|off] [--num_samples=1]')


def _flag_values() -> flags.FlagValues:
  fv = flags.FlagValues()
  flags.DEFINE_string('workdir', None, "The run's work directory.",
                      flag_values=fv)
  flags.DEFINE_string('prompt', None, 'The prompt text.', flag_values=fv)
  flags.DEFINE_float('temperature', 0.8, 'Softmax temperature; 0: greedy.',
                     flag_values=fv)
  flags.DEFINE_float('top_p', 0.95, 'Nucleus sampling mass in (0, 1].',
                     flag_values=fv)
  flags.DEFINE_integer('max_tokens', 64, 'New tokens at most.',
                       flag_values=fv)
  flags.DEFINE_integer('seed', 0, 'Public sampling seed.', flag_values=fv)
  flags.DEFINE_enum('weights', 'ema', ['ema', 'raw'], 'EMA or raw weights.',
                    flag_values=fv)
  flags.DEFINE_enum('chat', 'auto', ['auto', 'on', 'off'], 'Chat template.',
                    flag_values=fv)
  flags.DEFINE_integer('num_samples', 1, 'Completions to draw.',
                       flag_values=fv)
  return fv


def _error(msg: str) -> int:
  print(f'dpjax.generate: {msg}', file=sys.stderr)
  return 2


def _check(fv) -> str | None:
  """The first out-of-range flag, as a message, or None."""
  if fv.workdir is None or fv.prompt is None:
    return f'--workdir and --prompt are required\n{USAGE}'
  if not fv.temperature >= 0:
    return f'--temperature={fv.temperature}; valid: >= 0'
  if not 0 < fv.top_p <= 1:
    return f'--top_p={fv.top_p}; valid: in (0, 1]'
  if fv.max_tokens < 1:
    return f'--max_tokens={fv.max_tokens}; valid: >= 1'
  if fv.num_samples < 1:
    return f'--num_samples={fv.num_samples}; valid: >= 1'
  if not 0 <= fv.seed < 2**32:
    return f'--seed={fv.seed}; valid: 0 to 2^32 - 1'
  return None


def main(argv: list[str] | None = None) -> int:
  """Runs the command; returns its exit code."""
  argv = list(sys.argv if argv is None else argv)
  if cli_flags.help_requested(argv):
    print(f'{__doc__.strip()}\n\n{USAGE}')
    return 0
  fv = _flag_values()
  try:
    rest = fv(argv)
  except flags.Error as e:
    return _error(f'{e}\n{USAGE}')
  if rest[1:]:
    return _error(f'unexpected arguments {rest[1:]}\n{USAGE}')
  problem = _check(fv)
  if problem:
    return _error(problem)
  # pylint: disable=g-import-not-at-top
  from dpjax import configuration
  from dpjax import generation
  # pylint: enable=g-import-not-at-top
  try:
    generation.check_workdir(fv.workdir)  # before any model is built
    run = generation.load_run(fv.workdir, fv.weights)
    if fv.weights == 'ema' and not run.has_ema:
      print('dpjax.generate: note: the run kept no EMA (train.ema_decay=0): '
            'sampling from the raw weights', file=sys.stderr)
    texts = generation.generate(
        run, fv.prompt, max_tokens=fv.max_tokens, temperature=fv.temperature,
        top_p=fv.top_p, seed=fv.seed, chat=fv.chat,
        num_samples=fv.num_samples)
  except generation.GenerationError as e:
    return _error(str(e))
  except configuration.ConfigError as e:
    return _error(f'the run cannot be rebuilt: invalid configuration: {e}')
  for i, text in enumerate(texts):
    if len(texts) > 1:
      print(f'--- sample {i + 1}/{len(texts)} ---')
    print(text)
  sys.stdout.flush()
  return 0


if __name__ == '__main__':
  sys.exit(main())
