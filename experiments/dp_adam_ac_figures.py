"""DP-Adam-AC: the shape of Yang 2025's Figures 1-2 on CPU-sized models.

  python experiments/dp_adam_ac_figures.py            # small, ~5 min on 2 cores
  python experiments/dp_adam_ac_figures.py --steps 60 --models qwen2   # quicker

Loss against steps across noise levels, for a Qwen2-architecture decoder
(Figure 1) and a BitNet b1.58 decoder (ternary weights, 8-bit activations,
straight-through; Figure 2), both tiny and trained from random init, on a
synthetic corpus: sequences from a random first-order Markov chain over V
tokens (rows Dirichlet(alpha)), whose entropy rate is the best achievable
loss and is drawn in the plots. At every noise level the script compares

  * DP-Adam-AC, private quantile clipping (Andrew et al.), LR multiplier, EMA;
  * DP-AdamW with the fixed clip norm C_0 (same sigma, q, steps: equal
    epsilon), same EMA;
  * the raw and the EMA weights of each run (held-out loss);
  * once, at the smallest noise level, the paper's percentile-history rule
    (`nonprivate_percentile_clipping=True`): NOT private, marked so.

Every run uses `dpjax.steps.make_train_step` (with `clip_norm_fn` for
DP-Adam-AC), Poisson sampling at q = B/N padded to B_max, and a ledger; sigma
is calibrated with the PLD accountant for the target epsilon, and the table
reports epsilon from the ledger under PLD and RDP.

The full-size settings (Qwen2.5-0.5B, BitNet-2B shapes) are
`configs/dp_adam_ac_qwen2_0p5b_gpu.py` and `configs/dp_adam_ac_bitnet2b_gpu.py`.

Writes experiments/results/dp_adam_ac_{curves.csv, summary.csv, summary.md,
fig1_qwen2.png, fig2_bitnet.png}.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpjax import clipping
from dpjax import dp_adam_ac
from dpjax import models
from dpjax import optimizers
from dpjax import steps as steps_lib
from dpjax.accounting import PrivacyLedger, get_accountant
from dpjax.accounting.calibration import calibrate_sigma

RESULTS = os.path.join(os.path.dirname(__file__), 'results')


# ---- data -----------------------------------------------------------------


def markov_corpus(rng, *, vocab, seq_len, n_train, n_eval, alpha):
  """Records from one random Markov chain; returns (train, eval, entropy rate)."""
  trans = rng.dirichlet(np.full(vocab, alpha), size=vocab)
  # Stationary distribution: left eigenvector of eigenvalue 1.
  w, v = np.linalg.eig(trans.T)
  pi = np.real(v[:, np.argmin(np.abs(w - 1))])
  pi = pi / pi.sum()
  with np.errstate(divide='ignore', invalid='ignore'):
    row_h = -np.sum(np.where(trans > 0, trans * np.log(trans), 0.0), axis=1)
  entropy_rate = float(pi @ row_h)
  cum = np.cumsum(trans, axis=1)

  def sample(n):
    toks = np.empty((n, seq_len + 1), np.int32)
    toks[:, 0] = rng.choice(vocab, size=n, p=pi)
    for t in range(seq_len):
      u = rng.random(n)[:, None]
      toks[:, t + 1] = np.minimum((u > cum[toks[:, t]]).sum(1), vocab - 1)
    return {'inputs': toks[:, :-1], 'targets': toks[:, 1:]}

  return sample(n_train), sample(n_eval), entropy_rate


# ---- models ---------------------------------------------------------------


def build(family, args):
  common = dict(vocab_size=args.vocab, hidden_size=args.hidden,
                intermediate_size=2 * args.hidden,
                max_position_embeddings=args.seq_len)
  if family == 'qwen2':
    module, _ = models.build_model('qwen2', num_layers=2, num_heads=4,
                                   num_kv_heads=2, head_dim=args.hidden // 4,
                                   **common)
  else:
    module, _ = models.build_model(
        'bitnet', num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=args.hidden // 4,
        quantization='online', bos_token_id=None, eos_token_id=None, **common)
  params = module.init(jax.random.key(args.seed),
                       jnp.zeros((1, args.seq_len), jnp.int32))['params']
  return module, params


def make_losses(module):
  def record_loss(trainable, frozen, ex, key):
    del frozen, key
    logits = module.apply({'params': trainable}, ex['inputs'][None])[0]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits, ex['targets']))

  @jax.jit
  def eval_loss(params, batch):
    logits = module.apply({'params': params}, batch['inputs'])
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits, batch['targets']))

  return record_loss, eval_loss


# ---- one run --------------------------------------------------------------


def stages_for(method, sigma, c0, args, seed):
  """The DP-Adam-AC stages of one configuration (DP-AdamW: C fixed, no LR
  rule, no count released; `dp_adam_ac_stages` is then DP-AdamW)."""
  fixed = method == 'dp_adamw_fixed_c'
  return dp_adam_ac.dp_adam_ac_stages(
      noise_multiplier=sigma, expected_batch_size=float(args.batch),
      learning_rate=args.lr, key=jax.random.key(seed),
      initial_clip_norm=c0, target_quantile=args.target_quantile,
      clip_learning_rate=0.0 if fixed else 0.2,
      adapt_learning_rate=not fixed, count_noise_std=args.batch / 20.0,
      # dpjax.steps.make_train_step passes num_unclipped but not the
      # realised batch size: use the raw count (sensitivity 1).
      count_centered=(method == 'percentile_nonprivate'),
      nonprivate_percentile_clipping=(method == 'percentile_nonprivate'),
      history_size=10 * args.batch, min_clip_norm=0.05, max_clip_norm=50.0,
      b1=0.9, b2=0.999, eps=1e-8, weight_decay=args.weight_decay,
      ema_decay=args.ema_decay)


def compiled_step(method, stages, record_loss, args):
  """One jitted step per (model, method): every noise-dependent number lives
  in the chain state, so the noise levels share the compiled step."""
  if method != 'percentile_nonprivate':
    return jax.jit(steps_lib.vmap_train_step(
        record_loss, stages, l2_clip_norm=args.clip0,
        microbatch_size=args.microbatch,
        clip_norm_fn=dp_adam_ac.current_clip_norm))
  # The paper's rule needs the raw per-example norms, which make_train_step
  # does not pass yet: the same computation plus num_examples and norms.
  post = optimizers.post_clip(stages)

  @jax.jit
  def step(state, frozen, batch, mask, dropout_key, record_ids):
    keys = steps_lib.record_keys(dropout_key, state.step, record_ids)
    c = dp_adam_ac.current_clip_norm(state.opt_state)
    total, stats, norms = clipping.microbatched_clipped_sum(
        lambda p, ex, k: record_loss(p, frozen, ex, k), state.trainable,
        batch, mask, keys, l2_clip_norm=c, microbatch_size=args.microbatch)
    u, post_state = post.update(
        total, state.opt_state[1:], state.trainable,
        num_unclipped=stats.num_examples - stats.num_clipped,
        num_examples=stats.num_examples, clip_norm=c, norms=norms,
        norms_mask=mask)
    new = steps_lib.TrainState(
        state.step + 1, optax.apply_updates(state.trainable, u),
        (state.opt_state[0],) + tuple(post_state))
    return new, {'train_loss': stats.loss_sum / jnp.maximum(
        stats.num_examples, 1.0), 'clip_norm': c}
  return step


def run(step, stages, sigma, c0, *, eval_loss, params0, train, heldout, args,
        seed):
  """Trains one configuration; returns (curve rows, info)."""
  n = train['inputs'].shape[0]
  q = args.batch / n
  state = steps_lib.TrainState(step=jnp.zeros((), jnp.int32),
                               trainable=params0,
                               opt_state=optimizers.chain(stages).init(params0))
  ledger = PrivacyLedger(sampling='poisson', neighbouring='add_remove',
                         unit='one synthetic sequence', dataset_size=n,
                         batch_size=args.batch)
  rng = np.random.default_rng(seed)
  dropout_key = jax.random.key(seed + 1)
  ev = {k: jnp.asarray(v) for k, v in heldout.items()}
  rows, t0 = [], time.time()

  def evaluate(s):
    return (float(eval_loss(s.trainable, ev)),
            float(eval_loss(steps_lib.ema_trainable(s), ev)))

  raw, ema = evaluate(state)
  rows.append(dict(step=0, train_loss=float('nan'), eval_raw=raw,
                   eval_ema=ema, clip_norm=c0, lr_multiplier=1.0))
  for t in range(1, args.steps + 1):
    take = np.flatnonzero(rng.random(n) < q)
    if take.size > args.max_batch:
      # A second chunk would be needed (dpjax.sampling does that); at these
      # sizes P(|batch| > max_batch) is negligible, and failing keeps the
      # accounted mechanism exactly the one that ran.
      raise RuntimeError('Poisson draw above max_batch')
    idx = np.zeros(args.max_batch, np.int64)
    idx[:take.size] = take
    mask = np.zeros(args.max_batch, np.float32)
    mask[:take.size] = 1.0
    batch = {k: jnp.asarray(v[idx]) for k, v in train.items()}
    state, m = step(state, None, batch, jnp.asarray(mask), dropout_key,
                    jnp.asarray(idx, jnp.int32))
    ledger.record(q, sigma)
    if t % args.eval_every == 0 or t == args.steps:
      raw, ema = evaluate(state)
      rows.append(dict(
          step=t, train_loss=float(m['train_loss']), eval_raw=raw,
          eval_ema=ema, clip_norm=float(m['clip_norm']),
          lr_multiplier=float(dp_adam_ac.current_lr_multiplier(
              state.opt_state))))
  return rows, {'ledger': ledger, 'seconds': time.time() - t0}


# ---- driver ---------------------------------------------------------------


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--models', default='qwen2,bitnet')
  ap.add_argument('--epsilons', default='8,2')
  ap.add_argument('--steps', type=int, default=100)
  ap.add_argument('--batch', type=int, default=64)
  ap.add_argument('--max_batch', type=int, default=112)
  ap.add_argument('--microbatch', type=int, default=16)
  ap.add_argument('--n_train', type=int, default=2000)
  ap.add_argument('--n_eval', type=int, default=256)
  ap.add_argument('--vocab', type=int, default=64)
  ap.add_argument('--seq_len', type=int, default=32)
  ap.add_argument('--hidden', type=int, default=32)
  ap.add_argument('--alpha', type=float, default=0.05)
  ap.add_argument('--lr', type=float, default=3e-3)
  ap.add_argument('--weight_decay', type=float, default=0.01)
  ap.add_argument('--ema_decay', type=float, default=0.9)
  ap.add_argument('--clip0', type=float, default=1.0)
  ap.add_argument('--bad_clip', type=float, default=20.0)
  ap.add_argument('--seeds', type=int, default=2,
                  help='repetitions of the private AC / DP-AdamW pairs')
  ap.add_argument('--target_quantile', type=float, default=0.5)
  ap.add_argument('--delta', type=float, default=1e-5)
  ap.add_argument('--eval_every', type=int, default=10)
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--out', default=RESULTS)
  args = ap.parse_args()
  os.makedirs(args.out, exist_ok=True)
  rng = np.random.default_rng(args.seed)
  train, heldout, h_rate = markov_corpus(
      rng, vocab=args.vocab, seq_len=args.seq_len, n_train=args.n_train,
      n_eval=args.n_eval, alpha=args.alpha)
  q = args.batch / args.n_train
  pld, rdp = get_accountant('pld'), get_accountant('rdp')
  levels = [(math.inf, 0.0)]
  for e in [float(x) for x in args.epsilons.split(',') if x]:
    levels.append((e, calibrate_sigma(pld, target_epsilon=e, delta=args.delta,
                                      q=q, steps=args.steps)))
  print(f'entropy rate {h_rate:.4f} nats; q={q:.4f}; levels {levels}',
        flush=True)
  curves, summary = [], []
  t_all = time.time()
  for family in args.models.split(','):
    module, params0 = build(family, args)
    plan = []
    for eps, sigma in levels:
      for rep in range(args.seeds if sigma > 0 else 1):
        plan.append(('dp_adam_ac', eps, sigma, args.clip0, rep))
        plan.append(('dp_adamw_fixed_c', eps, sigma, args.clip0, rep))
    smallest = min(levels[1:], key=lambda l: l[1]) if len(levels) > 1 else None
    if smallest:
      # A badly tuned clip norm: AC should find its way back, fixed C not.
      plan.append(('dp_adam_ac', smallest[0], smallest[1], args.bad_clip, 0))
      plan.append(('dp_adamw_fixed_c', smallest[0], smallest[1],
                   args.bad_clip, 0))
      plan.append(('percentile_nonprivate', smallest[0], smallest[1],
                   args.clip0, 0))
    record_loss, eval_loss = make_losses(module)
    steps_by_method = {}
    for i, (method, eps, sigma, c0, rep) in enumerate(plan):
      # AC and DP-AdamW of one (level, rep) share the seed: same batches and
      # noise keys (common random numbers), so their difference is paired.
      seed = args.seed + 1000 * rep + 100 + 7 * (i // 2)
      stages = stages_for(method, sigma, c0, args, seed)
      if method not in steps_by_method:
        steps_by_method[method] = compiled_step(method, stages, record_loss,
                                                args)
      rows, info = run(steps_by_method[method], stages, sigma, c0,
                       eval_loss=eval_loss, params0=params0, train=train,
                       heldout=heldout, args=args, seed=seed)
      led = info['ledger']
      e_pld = (pld.epsilon(led.accountable_phases(), args.delta)
               if sigma > 0 else math.inf)
      e_rdp = (rdp.epsilon(led.accountable_phases(), args.delta)
               if sigma > 0 else math.inf)
      private = method != 'percentile_nonprivate' and sigma > 0
      for r in rows:
        curves.append(dict(model=family, method=method, target_epsilon=eps,
                           sigma=sigma, clip0=c0, rep=rep, **r))
      last = rows[-1]
      summary.append(dict(
          model=family, method=method, target_epsilon=eps, sigma=sigma,
          clip0=c0, rep=rep, epsilon_pld=e_pld, epsilon_rdp=e_rdp,
          formally_private=('yes' if private else
                            ('NO (not private)' if sigma > 0 else 'no noise')),
          eval_raw=last['eval_raw'], eval_ema=last['eval_ema'],
          best_eval_ema=min(r['eval_ema'] for r in rows),
          final_clip_norm=last['clip_norm'],
          final_lr_multiplier=last['lr_multiplier'],
          seconds=info['seconds']))
      print(f"{family:6s} {method:22s} C0={c0:<4g} eps={eps:<5} "
            f"sigma={sigma:.3f} "
            f"eval raw {last['eval_raw']:.4f} ema {last['eval_ema']:.4f} "
            f"C={last['clip_norm']:.3f} ({info['seconds']:.1f}s, "
            f"total {time.time() - t_all:.0f}s)", flush=True)
  write(curves, summary, h_rate, args)


def write(curves, summary, h_rate, args):
  def dump(name, rows):
    with open(os.path.join(args.out, name), 'w', newline='') as f:
      w = csv.DictWriter(f, fieldnames=list(rows[0]))
      w.writeheader()
      w.writerows(rows)
  dump('dp_adam_ac_curves.csv', curves)
  dump('dp_adam_ac_summary.csv', summary)
  lines = [
      '# DP-Adam-AC vs DP-AdamW (fixed C), small CPU reproduction',
      '',
      f'Synthetic Markov-chain corpus: V={args.vocab}, {args.n_train} train / '
      f'{args.n_eval} held-out sequences of {args.seq_len} tokens, entropy rate '
      f'(best possible loss) {h_rate:.4f} nats; uniform guess '
      f'{math.log(args.vocab):.4f}. Models from random init (hidden '
      f'{args.hidden}, 2 layers). Poisson q={args.batch}/{args.n_train}, '
      f'{args.steps} steps, lr {args.lr}, AdamW wd {args.weight_decay}, EMA '
      f'{args.ema_decay}, C_0 = fixed C = {args.clip0}, delta {args.delta}. '
      'DP-Adam-AC: private quantile clipping (target unclipped quantile '
      f'{args.target_quantile}, eta 0.2, sigma_b = B/20, raw count), LR '
      'multiplier on the privatized clip rate. Held-out loss of the final raw '
      'and EMA weights; one seed per row.',
      '',
      '| model | method | C_0 | rep | target ε | σ | ε (PLD) | ε (RDP) | '
      'private | eval raw | eval EMA | best EMA | final C | final LR mult |',
      '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for s in summary:
    lines.append(
        f"| {s['model']} | {s['method']} | {s['clip0']:g} | {s['rep']} | "
        f"{s['target_epsilon']} | "
        f"{s['sigma']:.3f} | {s['epsilon_pld']:.3f} | {s['epsilon_rdp']:.3f} | "
        f"{s['formally_private']} | {s['eval_raw']:.4f} | {s['eval_ema']:.4f} "
        f"| {s['best_eval_ema']:.4f} | {s['final_clip_norm']:.3f} | "
        f"{s['final_lr_multiplier']:.3f} |")
  lines += ['', 'Rows marked "NO (not private)" use the paper\'s percentile-'
            'of-raw-norms rule: the ε columns do not apply to them.', '',
            '## Paired differences, DP-Adam-AC minus DP-AdamW (same seed, '
            'same ε), final held-out loss', '',
            '| model | C_0 | target ε | rep | Δ raw | Δ EMA |',
            '|---|---|---|---|---|---|']
  for s in summary:
    if s['method'] != 'dp_adam_ac':
      continue
    twin = [t for t in summary if t['method'] == 'dp_adamw_fixed_c' and
            all(t[k] == s[k] for k in ('model', 'clip0', 'sigma', 'rep'))]
    if twin:
      t = twin[0]
      lines.append(f"| {s['model']} | {s['clip0']:g} | {s['target_epsilon']} "
                   f"| {s['rep']} | {s['eval_raw'] - t['eval_raw']:+.4f} | "
                   f"{s['eval_ema'] - t['eval_ema']:+.4f} |")
  lines.append('')
  with open(os.path.join(args.out, 'dp_adam_ac_summary.md'), 'w') as f:
    f.write('\n'.join(lines))
  plot(curves, h_rate, args)


def plot(curves, h_rate, args):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  names = {'qwen2': ('fig1_qwen2', 'Qwen2-architecture'),
           'bitnet': ('fig2_bitnet', 'BitNet b1.58')}
  tags = {'dp_adam_ac': 'DP-Adam-AC', 'dp_adamw_fixed_c': 'DP-AdamW fixed C',
          'percentile_nonprivate': 'AC percentile (NOT private)'}
  styles = {'dp_adam_ac': '-', 'dp_adamw_fixed_c': '--',
            'percentile_nonprivate': ':'}
  for family in sorted({c['model'] for c in curves}):
    fname, title = names[family]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    (a_main, a_ema), (a_bad, a_clip) = axes
    rows = [c for c in curves if c['model'] == family]
    levels = sorted({(c['target_epsilon'], c['sigma']) for c in rows},
                    key=lambda l: -l[0])
    colors = dict(zip(levels, plt.cm.viridis(np.linspace(0, 0.85,
                                                         len(levels)))))

    def series(method, sigma, c0):
      return [c for c in rows if c['method'] == method and
              c['sigma'] == sigma and c['clip0'] == c0 and c['rep'] == 0]

    for (eps, sigma) in levels:
      col = colors[(eps, sigma)]
      lab = 'no noise' if sigma == 0 else f'ε={eps:g} (σ={sigma:.2f})'
      for method in ('dp_adam_ac', 'dp_adamw_fixed_c'):
        r = series(method, sigma, args.clip0)
        st = [c['step'] for c in r]
        a_main.plot(st, [c['eval_ema'] for c in r], styles[method],
                    color=col, label=f'{tags[method]}, {lab}')
        if method == 'dp_adam_ac':
          a_ema.plot(st, [c['eval_ema'] for c in r], '-', color=col,
                     label=f'EMA, {lab}')
          a_ema.plot(st, [c['eval_raw'] for c in r], ':', color=col,
                     label=f'raw, {lab}')
          a_clip.plot(st, [c['clip_norm'] for c in r], '-', color=col,
                      label=f'AC from C_0={args.clip0:g}, {lab}')
      for method in tags:
        r = series(method, sigma, args.bad_clip if method !=
                   'percentile_nonprivate' else args.clip0)
        if not r or sigma == 0:
          continue
        c0 = r[0]['clip0']
        st = [c['step'] for c in r]
        a_bad.plot(st, [c['eval_ema'] for c in r], styles[method], color=col,
                   label=f'{tags[method]}, C_0={c0:g}, {lab}')
        if method != 'dp_adamw_fixed_c':
          a_clip.plot(st, [c['clip_norm'] for c in r], styles[method],
                      color='tab:red' if c0 == args.bad_clip else 'tab:orange',
                      label=f'{tags[method]} from C_0={c0:g}, {lab}')
      r = series('dp_adamw_fixed_c', sigma, args.clip0)
      if r and sigma > 0 and series('dp_adam_ac', sigma, args.bad_clip):
        a_bad.plot([c['step'] for c in r], [c['eval_ema'] for c in r], '--',
                   color='grey', label=f'DP-AdamW fixed C={args.clip0:g}, '
                   f'{lab}')
    for ax in (a_main, a_ema, a_bad):
      ax.axhline(h_rate, color='grey', lw=0.8)
      ax.set_ylabel('held-out loss (nats/token)')
    for ax in axes.flat:
      ax.set_xlabel('training step')
      ax.grid(alpha=0.3)
      ax.legend(fontsize=6.5)
    a_clip.set_yscale('log')
    a_clip.set_ylabel('clip norm C_t')
    a_main.set_title(f'{title}: DP-Adam-AC (solid) vs DP-AdamW fixed C '
                     f'(dashed), EMA weights', fontsize=9)
    a_ema.set_title('DP-Adam-AC: EMA (solid) vs raw (dotted) weights',
                    fontsize=9)
    a_bad.set_title(f'Badly tuned C_0={args.bad_clip:g}: adaptive vs fixed',
                    fontsize=9)
    a_clip.set_title('Clip norm trajectories', fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, f'dp_adam_ac_{fname}.png'), dpi=100)
    plt.close(fig)


if __name__ == '__main__':
  main()
