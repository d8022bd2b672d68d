"""The maintained list of one-line mutations of the privacy-critical code.

`experiments/mutation_testing.py` applies each entry alone to a temporary
copy of the repository and runs the entry's fast tests there; a mutation
that changes the guarantee must make them fail ("caught"). `make
test-mutation` runs the whole list; `tests/test_mutation_list.py` checks on
every `make test` that each `old` snippet still occurs exactly once, so the
list is maintained as the code changes.

Each entry:
  id: unique name.
  file: repository-relative path of the mutated file.
  old: an exact snippet that must occur exactly once in `file` (it may span
    lines; the mutation is the smallest edit of one statement).
  new: its replacement.
  effect: one of EFFECTS (what the mutation does to the guarantee);
    'equivalent' for the few that cannot change epsilon (then `why` says
    why), 'report_claim' for a wrong figure or label in the report that the
    ledger's epsilon does not depend on.
  why: one line: what it breaks (or why it is equivalent).
  tests: pytest node ids or files of the FAST suite (never `slow`) expected
    to catch it, cheapest likely catcher first. Paths that do not exist
    (yet) are skipped by the runner and listed as missing in the report.
"""

from __future__ import annotations

EFFECTS = ('less_noise', 'wrong_rate', 'wrong_count', 'wrong_sensitivity',
           'wrong_accounting', 'report_claim', 'equivalent')

# Tests that other work adds (they may not exist yet; the runner skips
# missing paths and reports them).
_AN = 'tests/test_audit_noise.py::'
AN_FULL = _AN + 'test_gaussian_full_fine_tuning'
AN_RGP = _AN + 'test_gaussian_rgp_carriers'
AN_SCHED = (_AN + 'test_batch_size_schedule_divides_by_each_steps_expected_'
            'size')
AN_AC = (_AN + 'test_dp_adam_ac_gradient_and_count_noise_where_the_boost_'
         'matters')
AN_LMO = _AN + 'test_lmo_noise_law_and_scale'
_IR = 'tests/accounting/test_independent_references.py::'
IR_PLD = _IR + 'test_pld_schedule_is_a_tight_upper_bound_of_dp_accounting'
IR_RDP = _IR + 'test_rdp_schedule_equals_dp_accounting_on_the_same_orders'
IR_LMO = _IR + 'test_lmo_sound_epsilon_against_numerical_pld'
IR_LMO_SCHED = (_IR + 'test_lmo_sound_epsilon_of_a_schedule_against_'
                'numerical_pld')

_T_NOISE = 'tests/test_noise.py'
_T_OPT = 'tests/test_optimizers.py'
_T_CLIP = 'tests/test_clipping.py'
_T_BK = 'tests/test_bookkeeping.py'
_T_AUDIT = 'tests/test_audit.py'
_T_TRAIN = 'tests/test_train.py'
_T_AC = 'tests/test_dp_adam_ac.py'
_T_ADAPT = 'tests/test_adaptive_clipping.py'
_T_LMO_NOISE = 'tests/test_lmo_noise.py'
_T_TRAIN_LMO = 'tests/test_train_lmo.py'
_T_RGP = 'tests/test_rgp_step.py'
_T_GROUPS = 'tests/test_microbatch_groups.py'
_T_SAMPLING = 'tests/test_sampling.py'
_T_SCHED = 'tests/test_batch_schedule.py'
_T_USER = 'tests/test_user_level.py'
_T_SECRETS = 'tests/test_train_secrets.py'
_T_RAND = 'tests/test_randomness.py'
_T_REPORTING = 'tests/test_reporting.py'
_T_PLD = 'tests/accounting/test_pld.py'
_T_RDP = 'tests/accounting/test_rdp.py'
_T_EDGE = 'tests/accounting/test_edgeworth.py'
_T_LMO = 'tests/accounting/test_lmo.py'
_T_CAL = 'tests/accounting/test_calibration.py'
_T_REPORT = 'tests/accounting/test_report.py'

_DEBUG_RUN = _T_TRAIN + '::test_debug_run_writes_report_metrics_and_plot'
_RAMP_RUN = _T_TRAIN + '::test_batch_schedule_accounts_every_step_with_its_own_q'
_SHUFFLE_RUN = (_T_TRAIN +
                '::test_nonprivate_and_shuffle_runs_label_their_guarantees')
_TWO_RUNS = (_T_SECRETS + '::test_two_default_runs_add_different_noise_and_'
             'draw_different_batches')


def _m(id_, file, old, new, effect, why, tests):
  return dict(id=id_, file=file, old=old, new=new, effect=effect, why=why,
              tests=list(tests))


MUTATIONS = [
    # ----------------------------------------------------------------------
    # Gaussian noise (dpjax/noise.py, optimizers.py, run_setup.py).
    _m('noise_half', 'dpjax/noise.py',
       'noise = [stddev * jax.random.normal(',
       'noise = [0.5 * stddev * jax.random.normal(',
       'less_noise', 'every Gaussian noise draw at half the std the ledger '
       'records', [_T_NOISE, AN_FULL]),
    _m('noise_98pct', 'dpjax/noise.py',
       'noise = [stddev * jax.random.normal(',
       'noise = [0.98 * stddev * jax.random.normal(',
       'less_noise', 'a 2% deficit of the Gaussian noise std',
       [_T_NOISE + '::test_noise_std_passes_ks_and_fails_at_wrong_scales',
        AN_FULL]),
    _m('noise_95pct', 'dpjax/noise.py',
       'noise = [stddev * jax.random.normal(',
       'noise = [0.95 * stddev * jax.random.normal(',
       'less_noise', 'a 5% deficit of the Gaussian noise std',
       [_T_NOISE + '::test_noise_std_passes_ks_and_fails_at_wrong_scales',
        AN_FULL]),
    _m('noise_key_reused', 'dpjax/noise.py',
       'return out, NoiseState(key=key)',
       'return out, NoiseState(key=state.key)',
       'less_noise', 'the same noise vector every step (the key is never '
       'advanced): differences of updates are noiseless',
       [_T_NOISE + '::test_noise_differs_every_step_and_is_reproducible',
        AN_FULL]),
    _m('dp_stages_half_noise', 'dpjax/optimizers.py',
       'noise=noise_lib.gaussian_noise(noise_multiplier * l2_clip_norm, key),',
       'noise=noise_lib.gaussian_noise(noise_multiplier * l2_clip_norm / 2, '
       'key),',
       'less_noise', 'the DP chain (trainer and research path) adds '
       'sigma*C/2 while the ledger records sigma',
       [_T_OPT + '::test_noise_is_added_to_the_sum_then_divided_by_expected_'
        'batch', AN_FULL]),
    _m('dp_stages_no_noise', 'dpjax/optimizers.py',
       'noise=noise_lib.gaussian_noise(noise_multiplier * l2_clip_norm, key),',
       'noise=optax.identity(),',
       'less_noise', 'the DP chain adds no noise at all',
       [_T_OPT + '::test_noise_is_added_to_the_sum_then_divided_by_expected_'
        'batch', AN_FULL]),
    _m('build_stages_half_sigma', 'dpjax/run_setup.py',
       'noise_multiplier=plan.noise_multiplier,\n'
       '      expected_batch_size=plan.batch_schedule or',
       'noise_multiplier=plan.noise_multiplier / 2,\n'
       '      expected_batch_size=plan.batch_schedule or',
       'less_noise', 'the trainer builds its Gaussian stage with sigma/2; '
       'the ledger records sigma',
       [AN_FULL, _TWO_RUNS]),
    _m('build_stages_noise_identity', 'dpjax/run_setup.py',
       'if not plan.enabled:\n    stages = stages._replace(noise=optax.'
       'identity())',
       'if True:\n    stages = stages._replace(noise=optax.identity())',
       'less_noise', 'the trainer replaces the noise stage by the identity '
       '(private runs add no noise)',
       [AN_FULL, _TWO_RUNS]),
    _m('normalize_constant_doubled', 'dpjax/optimizers.py',
       'return optax.scale(1.0 / float(sizes[0]))',
       'return optax.scale(2.0 / float(sizes[0]))',
       'equivalent', 'a different public constant applied after the noise '
       '(post-processing): the update scale changes, epsilon cannot',
       [_T_OPT]),
    # ----------------------------------------------------------------------
    # Clipping (dpjax/clipping.py, steps.py).
    _m('clip_2c', 'dpjax/clipping.py',
       'factor = jnp.minimum(1.0, l2_clip_norm / jnp.maximum(safe, 1e-30))',
       'factor = jnp.minimum(1.0, 2.0 * l2_clip_norm / jnp.maximum(safe, '
       '1e-30))',
       'wrong_sensitivity', 'gradients clipped to 2C while the noise is '
       'sigma*C',
       [_T_CLIP + '::test_sensitivity_add_or_remove_one_is_at_most_c',
        _T_CLIP + '::test_clipped_sum_equals_loop',
        _T_AUDIT + '::test_full_finetuning_passes_at_the_bound']),
    _m('per_layer_bound_c_per_leaf', 'dpjax/clipping.py',
       "split = (num_leaves if norm_ord == 1 else num_leaves ** 0.5)",
       'split = 1.0',
       'wrong_sensitivity', 'per-layer clipping bounds each of the L leaves '
       'by C: the concatenated sum has sensitivity sqrt(L) C, the noise is '
       'sigma C',
       [_T_CLIP + '::test_every_style_has_sensitivity_c_and_reaches_it',
        _T_CLIP + '::test_clip_styles_equal_loop']),
    _m('automatic_clip_gamma_halved_norm', 'dpjax/clipping.py',
       "f = clip_norm / (jnp.where(finite, norms, 0.0) + gamma)",
       "f = clip_norm / (0.5 * jnp.where(finite, norms, 0.0) + gamma)",
       'wrong_sensitivity', 'automatic clipping scales by C / (n/2 + gamma): '
       'a contribution of norm up to 2C',
       [_T_CLIP + '::test_every_style_has_sensitivity_c_and_reaches_it',
        _T_CLIP + '::test_clip_styles_equal_loop']),
    # Book-keeping (dpjax/bookkeeping.py, bk_norms.py): the same sum without per-example
    # gradients; its norms must include every use of a shared weight.
    _m('bk_tied_cross_term_dropped', 'dpjax/bk_norms.py',
       'total = total + (term if i == j else 2.0 * term)',
       'total = total + (term if i == j else 0.0 * term)',
       'wrong_sensitivity', 'book-keeping norms of a tied embedding miss the '
       'cross term of its two uses: norms too small, contributions above C',
       [_T_BK + '::test_equals_vmap_engine',
        _T_BK + '::test_planted_bugs_are_caught']),
    _m('bk_padding_counted', 'dpjax/bookkeeping.py',
       'jnp.sqrt(jnp.stack(sq, axis=1)), mmask, clip_norm, style=style,',
       'jnp.sqrt(jnp.stack(sq, axis=1)), jnp.ones_like(mmask), clip_norm, '
       'style=style,',
       'wrong_count', 'book-keeping ignores the mask: padded rows (copies of '
       'real records) enter the clipped sum',
       [_T_BK + '::test_equals_vmap_engine',
        _T_AUDIT + '::test_full_finetuning_passes_at_the_bound']),
    _m('clip_skipped', 'dpjax/clipping.py',
       'factor = jnp.minimum(1.0, l2_clip_norm / jnp.maximum(safe, 1e-30))',
       'factor = jnp.ones_like(safe)',
       'wrong_sensitivity', 'no clipping: unbounded sensitivity',
       [_T_CLIP + '::test_sensitivity_add_or_remove_one_is_at_most_c',
        _T_AUDIT + '::test_full_finetuning_passes_at_the_bound']),
    _m('clip_mask_ignored', 'dpjax/clipping.py',
       'return factor * mask.astype(jnp.float32)',
       'return factor',
       'wrong_count', 'padded rows (copies of record 0) are counted: one '
       'record can enter the sum many times',
       [_T_CLIP + '::test_padding_contributes_nothing_and_all_padding_is_zero',
        _T_AUDIT + '::test_full_finetuning_passes_at_the_bound']),
    _m('clip_nonfinite_kept', 'dpjax/clipping.py',
       'factor = jnp.where(finite, factor, 0.0)',
       'factor = jnp.where(finite, factor, 1.0)',
       'wrong_sensitivity', 'an example with a non-finite norm contributes '
       'its finite coordinates unclipped',
       [_T_CLIP + '::test_nan_example_is_dropped',
        _T_CLIP + '::test_partly_non_finite_example_contributes_nothing']),
    _m('clip_norm_floor', 'dpjax/clipping.py',
       'l2_clip_norm / jnp.maximum(safe, 1e-30))',
       'l2_clip_norm / jnp.maximum(safe, 1e-20))',
       'equivalent', 'changes min(1, C/||g||) only for norms below 1e-20, '
       'where the factor is 1 either way for any C >= 1e-20',
       [_T_CLIP]),
    _m('realised_batch_pre_noise', 'dpjax/clipping.py',
       'norms = jnp.moveaxis(norms, 0, 1).reshape((size,))\n'
       '  return total, stats, norms',
       'norms = jnp.moveaxis(norms, 0, 1).reshape((size,))\n'
       '  return jax.tree.map(lambda x: x * (size / jnp.maximum('
       'stats.num_examples, 1.0)), total), stats, norms',
       'wrong_sensitivity', 'the clipped sum is rescaled by (padded B / '
       'realised n) before the noise: every record moves it',
       [_T_AUDIT + '::test_full_finetuning_passes_at_the_bound',
        _T_CLIP + '::test_microbatched_equals_optax_stage_for_any_microbatch']),
    _m('realised_batch_post_noise', 'dpjax/steps.py',
       'trainable = optax.apply_updates(state.trainable, updates)',
       'trainable = optax.apply_updates(state.trainable, jax.tree.map('
       'lambda u: u * (mask.shape[0] / jnp.maximum(stats.num_examples, 1.0)'
       '), updates))',
       'wrong_sensitivity', 'the noised update is divided by the realised '
       'batch size n: the release reveals n (add/remove sensitivity 1, no '
       'noise), a leak outside the accounted mechanism',
       [AN_SCHED, _T_TRAIN + '::test_one_device_equals_eight_devices']),
    _m('dropout_slot_keyed', 'dpjax/steps.py',
       'flat = record_ids.reshape(-1).astype(jnp.uint32)',
       'flat = jnp.arange(record_ids.size, dtype=jnp.uint32)',
       'wrong_sensitivity', 'per-record dropout keys by batch slot: removing '
       'a record changes the other records\' gradients',
       [_T_RAND + '::test_record_keys_depend_on_the_record_not_the_slot',
        _T_AUDIT + '::test_bfloat16_parameters_with_dropout_pass']),
    _m('adaptive_clip_norm_ignored', 'dpjax/steps.py',
       'clip = (l2_clip_norm if clip_norm_fn is None\n'
       '            else clip_norm_fn(state.opt_state))',
       'clip = l2_clip_norm',
       'wrong_sensitivity', 'DP-Adam-AC clips at the configured C while its '
       'noise is scaled to the adaptive C_t',
       [_T_AC + '::test_research_path_equals_training_step_path',
        _T_AUDIT + '::test_dp_adam_ac_sum_and_count_pass']),
    # ----------------------------------------------------------------------
    # LMO noise (dpjax/lmo_noise.py, run_setup.py, privacy_plan.py).
    _m('lmo_noise_98pct', 'dpjax/lmo_noise.py',
       'noise = [scale * sample_lmo(k, params, jnp.shape(x))',
       'noise = [0.98 * scale * sample_lmo(k, params, jnp.shape(x))',
       'less_noise', 'a 2% deficit of the LMO noise scale',
       [_T_LMO_NOISE + '::test_transformation_state_key_and_scaling',
        _T_TRAIN_LMO + '::test_lmo_step_clips_in_l1_and_adds_scaled_lmo_noise',
        AN_LMO]),
    _m('lmo_noise_95pct', 'dpjax/lmo_noise.py',
       'noise = [scale * sample_lmo(k, params, jnp.shape(x))',
       'noise = [0.95 * scale * sample_lmo(k, params, jnp.shape(x))',
       'less_noise', 'a 5% deficit of the LMO noise scale',
       [_T_LMO_NOISE + '::test_transformation_state_key_and_scaling',
        _T_TRAIN_LMO + '::test_lmo_step_clips_in_l1_and_adds_scaled_lmo_noise',
        AN_LMO]),
    _m('lmo_laplace_half', 'dpjax/lmo_noise.py',
       'return jax.random.laplace(k_lap, shape, jnp.float32) / eps',
       'return jax.random.laplace(k_lap, shape, jnp.float32) / (2.0 * eps)',
       'less_noise', 'the unit LMO sampler draws Laplace at half the '
       'accounted scale',
       [_T_LMO_NOISE + '::test_noise_matches_exact_distribution',
        AN_LMO]),
    _m('lmo_exponential_rate', 'dpjax/lmo_noise.py',
       '(p.a3 / p.lam) * jax.random.exponential(',
       '(p.a3 * p.lam) * jax.random.exponential(',
       'less_noise', 'the Exponential part of eps\' drawn with scale lam '
       'instead of rate lam: not the accounted noise distribution',
       [_T_LMO_NOISE + '::test_inverse_scale_moments',
        _T_LMO_NOISE + '::test_noise_matches_exact_distribution']),
    _m('lmo_key_reused', 'dpjax/lmo_noise.py',
       'return out, LMONoiseState(key=key)',
       'return out, LMONoiseState(key=state.key)',
       'less_noise', 'the same LMO noise vector every step',
       [_T_LMO_NOISE + '::test_transformation_state_key_and_scaling',
        AN_LMO]),
    _m('lmo_stage_half_scale', 'dpjax/run_setup.py',
       'l1_sensitivity=plan.lmo_noise_scale,',
       'l1_sensitivity=plan.lmo_noise_scale / 2,',
       'less_noise', 'the trainer scales the unit LMO noise by half the '
       'planned scale',
       [_T_TRAIN_LMO + '::test_lmo_step_clips_in_l1_and_adds_scaled_lmo_noise',
        AN_LMO]),
    _m('plan_lmo_scale_half', 'dpjax/privacy_plan.py',
       'lmo_noise_scale=m * c1, **common)',
       'lmo_noise_scale=m * c1 / 2, **common)',
       'less_noise', 'the LMO plan scales the noise by half of multiplier x '
       'L1 clip norm while the ledger records the multiplier',
       [_T_TRAIN_LMO + '::test_lmo_step_clips_in_l1_and_adds_scaled_lmo_noise',
        _T_TRAIN_LMO + '::test_lmo_run_is_calibrated_and_accounted_with_the_'
        'sound_bound', AN_LMO]),
    # ----------------------------------------------------------------------
    # The step's noise call (dpjax/steps.py) and RGP's carrier clip.
    _m('rgp_noise_98pct', 'dpjax/steps.py',
       'noised, noise_state = noise.update(out.clipped_sum, opt_state[1], '
       'params,\n                                       **extra)',
       'noised, noise_state = noise.update(out.clipped_sum, opt_state[1], '
       'params,\n                                       **extra)\n'
       '    noised = jax.tree.map(lambda n, t: t + 0.98 * (n - t), noised, '
       'out.clipped_sum)',
       'less_noise', 'a 2% deficit of the noise in the one step (every '
       'engine; caught on RGP\'s carrier sum)',
       [_T_RGP + '::test_noise_only_in_carrier_space', AN_RGP]),
    _m('rgp_noise_95pct', 'dpjax/steps.py',
       'noised, noise_state = noise.update(out.clipped_sum, opt_state[1], '
       'params,\n                                       **extra)',
       'noised, noise_state = noise.update(out.clipped_sum, opt_state[1], '
       'params,\n                                       **extra)\n'
       '    noised = jax.tree.map(lambda n, t: t + 0.95 * (n - t), noised, '
       'out.clipped_sum)',
       'less_noise', 'a 5% deficit of the noise in the one step (every '
       'engine; caught on RGP\'s carrier sum)',
       [_T_RGP + '::test_noise_only_in_carrier_space', AN_RGP]),
    _m('rgp_clip_skipped', 'dpjax/rgp_step.py',
       'l2_clip_norm=clip_norm, microbatch_size=self.microbatch_size,',
       'l2_clip_norm=jnp.inf, microbatch_size=self.microbatch_size,',
       'wrong_sensitivity', 'the trainer\'s RGP step does not clip the '
       'carrier gradients',
       [_T_AUDIT + '::test_rgp_passes_in_carrier_space']),
    # ----------------------------------------------------------------------
    # Micro-batch groups (dpjax/microbatch_groups.py).
    _m('group_sensitivity_c', 'dpjax/microbatch_groups.py',
       '    return 1.0\n  return 2.0',
       '    return 1.0\n  return 1.0',
       'wrong_sensitivity', 'group units get noise for sensitivity C instead '
       'of 2C',
       [_T_AC + '::test_group_mode_noise_is_scaled_to_two_c',
        _T_GROUPS, AN_AC]),
    _m('group_mask_ignored', 'dpjax/microbatch_groups.py',
       'x32 = jnp.where(keep, x.astype(jnp.float32), 0.0)',
       'x32 = x.astype(jnp.float32)',
       'wrong_count', 'padded rows enter their group\'s mean',
       [_T_GROUPS + '::test_grouped_clipped_sum_matches_reference',
        _T_AUDIT + '::test_microbatch_groups_library_path_passes_at_2c']),
    _m('group_expected_units', 'dpjax/microbatch_groups.py',
       'return float(num_groups * (1.0 - (1.0 - q / num_groups) ** '
       'dataset_size))',
       'return float(num_groups)',
       'equivalent', 'the expected number of non-empty groups is a public '
       'normaliser applied after the noise (post-processing)',
       [_T_AUDIT + '::test_microbatch_groups_library_path_passes_at_2c',
        _T_GROUPS]),
    # ----------------------------------------------------------------------
    # DP-Adam-AC (dpjax/dp_adam_ac.py, adaptive_clipping.py, run_setup.py).
    _m('ac_sigma_delta_to_z', 'dpjax/dp_adam_ac.py',
       'grad_multiplier = ac.gradient_noise_multiplier(\n'
       '        noise_multiplier, count_noise_std,\n'
       '        ac.count_sensitivity(group_size, count_centered))',
       'grad_multiplier = float(noise_multiplier)',
       'less_noise', 'DP-Adam-AC drops the extra gradient noise that pays for '
       'the released count (sigma_Delta -> z)',
       [_T_AC + '::test_noise_std_is_sigma_delta_times_clip_norm_before_its_'
        'update', AN_AC]),
    _m('ac_sigma_delta_formula', 'dpjax/adaptive_clipping.py',
       'return (z ** -2 - zb ** -2) ** -0.5',
       'return (z ** -2 + zb ** -2) ** -0.5',
       'less_noise', 'sigma_Delta below z: gradient plus count cost more than '
       'the recorded z',
       [_T_ADAPT + '::test_sigma_delta_closed_form',
        _T_ADAPT + '::test_joint_mechanism_accounts_as_one_gaussian_of_'
        'multiplier_z']),
    _m('ac_group_factor_dropped', 'dpjax/dp_adam_ac.py',
       'std = state.grad_multiplier * sens * c_t',
       'std = state.grad_multiplier * c_t',
       'wrong_sensitivity', 'DP-Adam-AC group mode noises for C_t instead of '
       '2 C_t',
       [_T_AC + '::test_group_mode_noise_is_scaled_to_two_c', AN_AC]),
    _m('ac_count_noise_half', 'dpjax/adaptive_clipping.py',
       'noise = count_noise_std * jax.random.normal(key, (), jnp.float32)',
       'noise = 0.5 * count_noise_std * jax.random.normal(key, (), '
       'jnp.float32)',
       'less_noise', 'the unclipped count gets half its noise',
       [_T_ADAPT + '::test_implemented_noise_stds_give_whitened_sensitivity_'
        'one_over_z', AN_AC]),
    _m('ac_count_sensitivity_half', 'dpjax/adaptive_clipping.py',
       'return 0.5 if (group_size == 1 and centered) else 1.0',
       'return 0.5',
       'wrong_count', 'count sensitivity 1/2 where it is 1 (groups, raw '
       'count): sigma_Delta too small',
       [_T_ADAPT + '::test_group_count_sensitivity', AN_AC]),
    _m('ac_count_not_centered', 'dpjax/adaptive_clipping.py',
       'centered = count - 0.5 * jnp.asarray(num_units, jnp.float32)',
       'centered = count',
       'wrong_count', 'the raw count (sensitivity 1) is released where the '
       'centered one (sensitivity 1/2) is accounted',
       [_T_ADAPT + '::test_implemented_noise_stds_give_whitened_sensitivity_'
        'one_over_z', _T_ADAPT + '::test_private_quantile_tracking_converges_'
        'to_target_quantile', AN_AC]),
    _m('ac_count_key_reused', 'dpjax/dp_adam_ac.py',
       'clip_norm=c_next.astype(jnp.float32), count_key=count_key,',
       'clip_norm=c_next.astype(jnp.float32), count_key=ctl.count_key,',
       'less_noise', 'the same count noise every step',
       [AN_AC, _T_ADAPT]),
    _m('ac_grad_key_reused', 'dpjax/dp_adam_ac.py',
       'return out, NoiseStageState(noise=noise_lib.NoiseState(key=key),',
       'return out, NoiseStageState(noise=state.noise,',
       'less_noise', 'the same DP-Adam-AC gradient noise every step',
       [AN_AC, _T_AC]),
    _m('ac_centered_when_raw_accounted', 'dpjax/dp_adam_ac.py',
       'if not count_centered:\n      num_examples = None',
       'if False:\n      num_examples = None',
       'equivalent', 'releases the centered count (sensitivity 1/2) where '
       'the raw count (sensitivity 1) was accounted: more private, epsilon '
       'cannot grow', [_T_AC + '::test_make_train_step_with_raw_count_equals_'
                       'research_path']),
    _m('ac_default_count_std', 'dpjax/run_setup.py',
       'plan.expected_batch_size / 20.0)',
       'plan.expected_batch_size / 10.0)',
       'equivalent', 'a larger default count noise: sigma_Delta is derived '
       'from it so that gradient + count still cost exactly z',
       [_T_TRAIN + '::test_dp_adam_ac_runs_and_faithful_percentile_mode_is_'
        'flagged']),
    # ----------------------------------------------------------------------
    # Sampling (dpjax/sampling.py, train.py).
    _m('poisson_rate_x1.25', 'dpjax/sampling.py',
       'n = int(self._rng.binomial(self.dataset_size, q))',
       'n = int(self._rng.binomial(self.dataset_size, min(1.0, 1.25 * q)))',
       'wrong_rate', 'the Poisson sampler draws at 1.25 q',
       [_T_SAMPLING + '::test_poisson_batch_sizes_follow_binomial',
        _T_SAMPLING + '::test_poisson_inclusion_is_bernoulli_q_per_example']),
    _m('poisson_rate_x1.05', 'dpjax/sampling.py',
       'n = int(self._rng.binomial(self.dataset_size, q))',
       'n = int(self._rng.binomial(self.dataset_size, min(1.0, 1.05 * q)))',
       'wrong_rate', 'the Poisson sampler draws at 1.05 q',
       [_T_SAMPLING + '::test_poisson_batch_sizes_follow_binomial',
        _T_SAMPLING + '::test_poisson_inclusion_is_bernoulli_q_per_example']),
    _m('poisson_schedule_ignored', 'dpjax/sampling.py',
       'q = float(expected_batch_size) / self.dataset_size',
       'q = self.q',
       'wrong_rate', 'the sampler ignores B_t and draws at the final rate '
       'while the ledger records the ramp\'s q_t',
       [_T_SAMPLING, _T_SCHED, _RAMP_RUN]),
    _m('poisson_overflow_truncated', 'dpjax/sampling.py',
       'idx = self._rng.choice(self.dataset_size, size=n, replace=False)',
       'idx = self._rng.choice(self.dataset_size, size=min(n, '
       'self.max_batch_size), replace=False); n = idx.size',
       'wrong_rate', 'overflowing draws are truncated: not Poisson sampling',
       [_T_SAMPLING + '::test_overflow_is_split_into_chunks_not_truncated']),
    _m('ramp_sampler_constant_rate', 'dpjax/train.py',
       'return sampler.draw(plan.batch_size_at(step))',
       'return sampler.draw()',
       'wrong_rate', 'with train.batch_schedule=\'linear_ramp\' the sampler '
       'draws at the final (largest) rate, the ledger records the ramp',
       [_T_SCHED, _T_SAMPLING, _RAMP_RUN]),
    _m('ramp_sampler_off_by_one', 'dpjax/train.py',
       'return sampler.draw(plan.batch_size_at(step))',
       'return sampler.draw(plan.batch_size_at(step + 1))',
       'wrong_rate', 'on a rising ramp the sampler draws at q_{t+1} > q_t '
       'recorded by the ledger',
       [_T_SCHED, _T_SAMPLING, _RAMP_RUN]),
    # ----------------------------------------------------------------------
    # Ledger recording (privacy_plan.record_step, train.py) and the plan.
    _m('ledger_records_sigma_x1.1', 'dpjax/privacy_plan.py',
       'ledger.record(q, z)',
       'ledger.record(q, 1.1 * z)',
       'wrong_accounting', 'the ledger records 1.1 sigma',
       [_RAMP_RUN, AN_FULL]),
    _m('ledger_records_half_q', 'dpjax/privacy_plan.py',
       'ledger.record(q, z)',
       'ledger.record(q / 2, z)',
       'wrong_accounting', 'the ledger records q/2',
       [_RAMP_RUN, AN_FULL]),
    _m('ledger_skips_steps', 'dpjax/privacy_plan.py',
       '    if self.enabled:\n      q, z = self.q_at(step)',
       '    if self.enabled and step % 2:\n      q, z = self.q_at(step)',
       'wrong_count', 'the ledger records every other step',
       [_RAMP_RUN, _DEBUG_RUN]),
    _m('resume_forgets_ledger', 'dpjax/train.py',
       "ledger = ledger_lib.PrivacyLedger.from_dict(meta['ledger'])",
       "ledger = ledger_lib.PrivacyLedger.from_dict(dict(meta['ledger'], "
       'phases=[]))',
       'wrong_count', 'a resumed run forgets the steps before the restart',
       [_T_TRAIN + '::test_resume_equals_uninterrupted',
        _T_TRAIN_LMO + '::test_lmo_ledger_survives_a_restart_from_the_'
        'checkpoint']),
    _m('secret_from_config_seed', 'dpjax/train.py',
       'configured = randomness.SecretRandomness.from_config(config.dp)',
       'configured = randomness.SecretRandomness(hashlib.sha256(str('
       'config.seed).encode()).digest())',
       'less_noise', 'the noise, sampler and dropout keys derive from the '
       'public config.seed (anyone can subtract the noise)',
       [_TWO_RUNS]),
    _m('secret_fixed_material', 'dpjax/randomness.py',
       'return cls(os.urandom(SEED_BYTES), None)',
       "return cls(hashlib.sha256(b'dpjax').digest(), None)",
       'less_noise', 'the default secret material is a public constant',
       [_T_RAND + '::test_default_draws_fresh_os_entropy_every_time',
        _TWO_RUNS]),
    _m('plan_shuffle_sensitivity_c', 'dpjax/privacy_plan.py',
       'sigma = 2.0 * calibration.calibrate_sigma(',
       'sigma = calibration.calibrate_sigma(',
       'wrong_sensitivity', 'shuffle calibration for sensitivity C where '
       'replace-one has 2C: the run misses its target epsilon',
       [_SHUFFLE_RUN]),
    _m('plan_schedule_calibrated_at_half_q', 'dpjax/privacy_plan.py',
       'rates=[rate(b / dataset_size) for b in sizes]',
       'rates=[rate(b / dataset_size / 2) for b in sizes]',
       'wrong_rate', 'the schedule\'s sigma is calibrated for q_t/2: the run '
       'misses its target epsilon',
       [_RAMP_RUN]),
    _m('els_rate_is_record_rate', 'dpjax/user_level.py',
       'return float(-math.expm1(group_size * math.log1p(-q))) if q < 1 '
       'else 1.0',
       'return float(q)',
       'wrong_rate', 'ELS steps recorded at the record rate q instead of '
       'the user-level rate 1 - (1 - q)^k',
       [_T_USER + '::test_els_ledger_records_the_user_level_mechanism']),
    _m('els_sigma_not_divided_by_k', 'dpjax/privacy_plan.py',
       'q, z = user_level.els_rate(q, self.group_size), z / self.group_size',
       'q, z = user_level.els_rate(q, self.group_size), z',
       'wrong_sensitivity', 'ELS steps recorded at multiplier z, as if a '
       'user moved the sum by C rather than k C',
       [_T_USER + '::test_els_ledger_records_the_user_level_mechanism']),
    _m('uls_user_count_off_by_k', 'dpjax/run_setup.py',
       "  if config.dp.user_sampling == 'uls':\n    return len(users)",
       "  if config.dp.user_sampling == 'uls':\n    return sum(len(u) for u "
       'in users)',
       'wrong_rate', 'ULS sampling rate computed over records instead of '
       'users (q too small)',
       [_T_USER + '::test_trainer_runs_user_level_and_reports_the_unit']),
    _m('plan_calibrated_for_half_steps', 'dpjax/privacy_plan.py',
       'steps=config.train.steps, neighbouring=neighbouring)',
       'steps=max(1, config.train.steps // 2), neighbouring=neighbouring)',
       'wrong_count', 'sigma calibrated for half the steps: the run misses '
       'its target epsilon',
       [_DEBUG_RUN]),
    # ----------------------------------------------------------------------
    # Batch schedule and calibration.
    _m('schedule_records_half_q', 'dpjax/batch_schedule.py',
       'ledger.record(float(q), float(sigma))',
       'ledger.record(float(q) / 2, float(sigma))',
       'wrong_accounting', 'variable-q phases (and the schedule calibration) '
       'at q_t/2',
       [_T_SCHED + '::test_variable_q_ledger_equals_direct_composition',
        _T_SCHED]),
    _m('schedule_calibration_unverified', 'dpjax/batch_schedule.py',
       '  assert eps(hi) <= target_epsilon\n  return hi',
       '  assert eps(hi) <= target_epsilon\n  return lo',
       'wrong_accounting', 'the schedule calibration returns the infeasible '
       'end of its bracket (epsilon above target)',
       [_T_SCHED + '::test_calibrate_sigma_for_schedule_is_verified_and_'
        'tight']),
    _m('calibrate_sigma_below_verified', 'dpjax/accounting/calibration.py',
       'return _refine(eps, target_epsilon, lo, hi, rtol, geometric=True)',
       'return 0.98 * _refine(eps, target_epsilon, lo, hi, rtol, '
       'geometric=True)',
       'wrong_accounting', 'calibration returns 2% less sigma than it '
       'verified: epsilon above target',
       [_T_CAL]),
    _m('calibrate_sigma_above_verified', 'dpjax/accounting/calibration.py',
       'return _refine(eps, target_epsilon, lo, hi, rtol, geometric=True)',
       'return 1.02 * _refine(eps, target_epsilon, lo, hi, rtol, '
       'geometric=True)',
       'equivalent', 'more noise than verified; the ledger records the sigma '
       'applied, so the reported epsilon stays a bound (only tightness '
       'suffers)', [_T_CAL]),
    _m('calibrate_steps_one_too_many', 'dpjax/accounting/calibration.py',
       '  while hi - lo > 1:\n    mid = (lo + hi) // 2\n    if ok(mid):\n'
       '      lo = mid\n    else:\n      hi = mid\n  return lo',
       '  while hi - lo > 1:\n    mid = (lo + hi) // 2\n    if ok(mid):\n'
       '      lo = mid\n    else:\n      hi = mid\n  return hi',
       'wrong_count', 'calibrate_steps returns one step past the target',
       [_T_CAL]),
    # ----------------------------------------------------------------------
    # Ledger.
    _m('ledger_merge_drops_steps', 'dpjax/accounting/ledger.py',
       'self.phases.append(Phase(q, sigma, last.count + count))',
       'self.phases.append(Phase(q, sigma, last.count))',
       'wrong_count', 'merging identical steps loses the new ones',
       [_T_SCHED + '::test_variable_q_ledger_equals_direct_composition',
        _T_REPORT, _DEBUG_RUN]),
    _m('ledger_replace_one_factor', 'dpjax/accounting/ledger.py',
       "factor = 0.5 if self.neighbouring == 'replace_one' else 1.0",
       'factor = 1.0',
       'wrong_sensitivity', 'a shuffle (replace-one) ledger accounts '
       'sensitivity C instead of 2C',
       [_T_REPORT, _SHUFFLE_RUN, _T_REPORTING]),
    _m('ledger_shuffle_best_sigma', 'dpjax/accounting/ledger.py',
       's = min(sigmas[start:start + steps_per_epoch])',
       's = max(sigmas[start:start + steps_per_epoch])',
       'wrong_accounting', 'a shuffle epoch is accounted at its LARGEST '
       'sigma (its least private step is ignored; differs only when sigma '
       'varies within an epoch)',
       ['tests/accounting/test_ledger.py', _T_REPORT, _T_REPORTING]),
    # ----------------------------------------------------------------------
    # PLD accountant.
    _m('pld_drops_phases', 'dpjax/accounting/pld.py',
       'for p in phases if p.count > 0)',
       'for p in phases[-1:] if p.count > 0)',
       'wrong_accounting', 'PLD composes only the last phase',
       [_T_SCHED + '::test_variable_q_ledger_equals_direct_composition',
        _T_PLD, IR_PLD]),
    _m('pld_half_steps', 'dpjax/accounting/pld.py',
       'return tuple((float(p.q), float(p.sigma), int(p.count))',
       'return tuple((float(p.q), float(p.sigma), int(p.count + 1) // 2)',
       'wrong_count', 'PLD composes half the steps', [_T_PLD, IR_PLD]),
    _m('pld_remove_direction_only', 'dpjax/accounting/pld.py',
       "return ('remove', 'add')",
       "return ('remove',)",
       'equivalent', 'for the Poisson-subsampled Gaussian the add direction '
       'never gave the larger epsilon in a scan of 270 settings (q 0.01-0.95, '
       'sigma 0.3-5, 1-100 steps, delta 1e-5-0.3: add/remove <= 0.998), so '
       'dropping it did not change any epsilon; kept as a tripwire in case a '
       'mechanism where add dominates is accounted with PLD',
       [_T_PLD, IR_PLD]),
    _m('pld_delta_x10', 'dpjax/accounting/pld.py',
       'eps = max(_eps_from_pmf(*r, delta)',
       'eps = max(_eps_from_pmf(*r, 10 * delta)',
       'wrong_accounting', 'PLD epsilon read off at 10 delta',
       [_T_PLD, IR_PLD]),
    _m('pld_bucket_sigma_up', 'dpjax/accounting/pld.py',
       'sb = (math.exp(math.floor(math.log(s) / lr + 1e-12) * lr)',
       'sb = (math.exp(math.ceil(math.log(s) / lr + 1e-12) * lr)',
       'wrong_accounting', 'bucketing of many distinct steps rounds sigma up '
       '(optimistic)',
       [_T_PLD + '::test_many_distinct_steps_are_bucketed_pessimistically']),
    # ----------------------------------------------------------------------
    # RDP accountant.
    _m('rdp_drops_phases', 'dpjax/accounting/rdp.py',
       'total = total + p.count * self._cache[key]',
       'total = p.count * self._cache[key]',
       'wrong_accounting', 'RDP keeps only the last phase',
       [_T_SCHED + '::test_variable_q_ledger_equals_direct_composition',
        _T_RDP, IR_RDP]),
    _m('rdp_full_batch_half', 'dpjax/accounting/rdp.py',
       'return orders / (2 * sigma**2)',
       'return orders / (4 * sigma**2)',
       'wrong_sensitivity', 'RDP of the q = 1 Gaussian for sensitivity 1/sqrt2',
       [_T_RDP, IR_RDP]),
    _m('rdp_log_a_int_sigma', 'dpjax/accounting/rdp.py',
       '(k * k - k) / (2 * sigma**2))',
       '(k * k - k) / (4 * sigma**2))',
       'wrong_accounting', 'subsampled-Gaussian RDP (integer orders) for a '
       'larger sigma', [_T_RDP, IR_RDP]),
    _m('rdp_delta_x10', 'dpjax/accounting/rdp.py',
       '(math.log(delta) + np.log(orders)) / (orders - 1))',
       '(math.log(10 * delta) + np.log(orders)) / (orders - 1))',
       'wrong_accounting', 'RDP -> (eps, delta) conversion at 10 delta',
       [_T_RDP, IR_RDP]),
    _m('rdp_replace_one_sensitivity', 'dpjax/accounting/rdp.py',
       'return p.sigma / 2.0',
       'return p.sigma',
       'wrong_sensitivity', 'replace-one accounted with sensitivity C '
       'instead of 2C', [_T_RDP, IR_RDP]),
    # ----------------------------------------------------------------------
    # Edgeworth (an estimate, always reported beside the PLD bound).
    _m('edgeworth_drops_phases', 'dpjax/accounting/edgeworth.py',
       'ku += p.count * m.cumulants_u',
       'ku = p.count * m.cumulants_u',
       'report_claim', 'the Edgeworth estimate (never the guarantee: the PLD '
       'bound is beside it) composes only the last phase for U',
       [_T_EDGE]),
    # ----------------------------------------------------------------------
    # LMO accountant.
    _m('lmo_half_steps', 'dpjax/accounting/lmo.py',
       'return [LMOPhase(self.params, float(p.q), int(p.count),',
       'return [LMOPhase(self.params, float(p.q), int(p.count) // 2,',
       'wrong_count', 'the LMO accountant composes half the steps',
       [_T_LMO, _T_TRAIN_LMO + '::test_lmo_run_is_calibrated_and_accounted_'
        'with_the_sound_bound', IR_LMO, IR_LMO_SCHED]),
    _m('lmo_sensitivity_half', 'dpjax/accounting/lmo.py',
       'l1_sensitivity=1.0 / float(p.sigma))',
       'l1_sensitivity=0.5 / float(p.sigma))',
       'wrong_sensitivity', 'the LMO accountant assumes half the L1 '
       'sensitivity', [_T_LMO, _T_TRAIN_LMO + '::test_lmo_run_is_calibrated_'
                        'and_accounted_with_the_sound_bound',
                        IR_LMO, IR_LMO_SCHED]),
    _m('lmo_rdp_half_steps', 'dpjax/accounting/lmo.py',
       'total = total + ph.count * subsampled_rdp(',
       'total = total + (ph.count // 2) * subsampled_rdp(',
       'wrong_count', 'the LMO RDP route composes half the steps',
       [_T_LMO, IR_LMO, IR_LMO_SCHED]),
    _m('lmo_pure_half_rate', 'dpjax/accounting/lmo.py',
       'eps_pure += ph.count * amplified_pure_dp(e, float(ph.q))',
       'eps_pure += ph.count * amplified_pure_dp(e, float(ph.q) / 2)',
       'wrong_rate', 'the LMO pure-DP route amplifies with q/2',
       [_T_LMO, IR_LMO, IR_LMO_SCHED]),
    _m('lmo_delta_x10', 'dpjax/accounting/lmo.py',
       '(math.log(delta) + np.log(orders)) / (orders - 1))',
       '(math.log(10 * delta) + np.log(orders)) / (orders - 1))',
       'wrong_accounting', 'LMO RDP -> (eps, delta) conversion at 10 delta',
       [_T_LMO, IR_LMO, IR_LMO_SCHED]),
    # ----------------------------------------------------------------------
    # Many processes.
    _m('multihost_own_secret_material', 'dpjax/train.py',
       "      bytes.fromhex(packed['material']),",
       '      randomness.SecretRandomness.from_config(config.dp).to_bytes(),',
       'wrong_sensitivity', "a process draws its own material instead of "
       "process 0's: hosts draw different batches, so one record can sit in "
       'two hosts\' slices of the global batch',
       ['tests/test_distributed.py::test_other_processes_take_process_'
        'zeros_secret']),
    # ----------------------------------------------------------------------
    # Reports.
    _m('report_steps_halved', 'dpjax/reporting.py',
       "'steps': ledger.steps,",
       "'steps': ledger.steps // 2,",
       'report_claim', 'the report states half the steps taken',
       [_DEBUG_RUN, _T_REPORTING]),
    _m('report_delta_claim', 'dpjax/reporting.py',
       "'delta': plan.delta,\n      'evaluation'",
       "'delta': plan.delta / 10,\n      'evaluation'",
       'report_claim', 'the report states a delta 10x smaller than the '
       'accounted one', [_T_REPORTING, _DEBUG_RUN]),
    _m('report_rows_use_poisson_for_shuffle', 'dpjax/accounting/report.py',
       '    phases = ledger.accountable_phases()\n'
       "    rows = _rows(phases, delta, accountants, 'add_remove', GUARANTEE)",
       '    phases = ledger.poisson_equivalent_phases()\n'
       "    rows = _rows(phases, delta, accountants, 'add_remove', GUARANTEE)",
       'wrong_accounting', 'a shuffle run\'s guarantee rows claim Poisson '
       'amplification', [_T_REPORT, _SHUFFLE_RUN, _T_REPORTING]),
]
