"""Every default of a dpjax run, one commented field per line.

Other configs start from this one and change what they need. Fields are read
strictly (no hidden defaults in code); `dpjax.configuration.validate` checks
each one and names the field in its error.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  # Seeds PUBLIC choices only: initialisation, LoRA init, RGP bases, data splits, evaluation
  # order. The secret randomness (noise, Poisson sampling, dropout) comes from OS entropy
  # unless dp.insecure_fixed_randomness_seed is set.
  config.seed = 0

  # ---- Model ----
  config.model = ml_collections.ConfigDict()
  config.model.family = 'llama'        # llama | qwen2 | bitnet | gpt2 | bert | roberta
  config.model.init = 'random'         # random (decoders; fields below, in Llama's names) | hf | gguf
  config.model.path = ''               # Folder (hf) or file (gguf); '' for random.
  config.model.vocab_size = 258        # Random init only (pretrained: from the file).
  config.model.hidden_size = 64
  config.model.intermediate_size = 128
  config.model.num_layers = 2
  config.model.num_heads = 4
  config.model.num_kv_heads = 2
  config.model.head_dim = 16
  config.model.rope_theta = 10000.0
  config.model.rms_norm_eps = 1e-6
  config.model.qkv_bias = False        # True for Qwen2.
  config.model.tie_embeddings = False
  config.model.max_position_embeddings = 512
  config.model.dropout_rate = 0.0      # Per-example dropout keys when > 0.
  config.model.dtype = 'float32'       # Compute dtype.
  config.model.param_dtype = 'float32'
  config.model.remat = False

  # ---- Which parameters train ----
  config.peft = ml_collections.ConfigDict()
  config.peft.mode = 'full'            # full | lora | bias_only | norms | rgp
  config.peft.lora_rank = 4
  config.peft.lora_alpha = 8.0
  config.peft.lora_targets = r'.*self_attn/(q|v)_proj'
  # RGP (reparametrized gradient perturbation, EW-Tune's training): the kernels of the
  # modules matching rgp_targets train through rank-r gradient carriers (bases from one
  # power iteration on the current weights each step); rgp_extra_trainable leaves
  # (regexes on '/'-joined paths, e.g. a classifier head) train normally beside them.
  config.peft.rgp_rank = 1
  config.peft.rgp_targets = r'.*(self_attn/(q|k|v|o)_proj|mlp/(gate|up|down)_proj)'
  config.peft.rgp_extra_trainable = ()
  config.peft.rgp_power_iters = 1
  config.peft.rgp_cross_sign = -1.0    # -1: RGP paper (exact at full rank); +1: EW-Tune's code.
  config.peft.rgp_extra_grad_scale = 1.0  # Per-example grads of the extra leaves x this before
                                       # clipping (EW-Tune's code: 0.1 for the head).

  # ---- Data ----
  config.data = ml_collections.ConfigDict()
  config.data.corpus = 'shakespeare'   # shakespeare (embedded) | records (synthetic notes + canaries) | files (yours: data.path)
  config.data.records_n = 2000         # records: fictitious clinical notes (one record each).
  config.data.canary_repetitions = (1, 10, 100)  # records: copies of each secret canary.
  config.data.exposure_samples = 2000  # records: candidates scored per canary (sampled exposure).
  # files: your data. One record = one JSON line / CSV or TSV row / .txt file of a folder,
  # truncated to seq_len tokens, never packed with another (examples/support_tickets/).
  config.data.path = ''                # files: a .jsonl/.json (JSON lines), .csv, .tsv file or a folder of .txt
  config.data.format = ''              # files: '' (from the suffix) | jsonl | csv | tsv | text_folder
  config.data.text_field = 'text'      # files: the text (task lm, classification)
  config.data.prompt_field = 'prompt'  # files: the prompt (task instruction; no loss on it)
  config.data.response_field = 'response'  # files: the answer (task instruction; the loss)
  config.data.label_field = 'label'    # files: the class (task classification)
  config.data.label_names = ()         # files, classification: the classes, public and fixed here (>= 2;
                                       # not read from the data). A label is a name or an index 0..K-1.
  config.data.user_field = ''          # files: the field naming the person; set: the unit is one user
  config.data.max_records_per_user = 16  # user-level DP: at most this many of a user's records per step
  config.data.heldout_path = ''        # files: held-out data (same format and fields); '' = split data.path
  # files: without heldout_path, a record is held out iff SHA-256 of its user id (else of its
  # content) maps below this fraction: a public rule, so held-out data is public (its losses
  # are released without noise) and a user is never on both sides.
  config.data.heldout_fraction = 0.1
  config.data.task = 'lm'              # lm (causal LM) | genre (passage -> genre) | files: instruction | classification
  config.data.genres = ('comedy', 'tragedy')  # genre task: the classes
  config.data.passage_chars = 200      # genre task: minimum passage length
  config.data.tokenizer = 'byte'       # byte | model (the pretrained model's own)
  config.data.seq_len = 64             # Tokens per record (one packed sequence).
  config.data.heldout_works = ('twelfth_night', 'antony_and_cleopatra', 'richard_ii')
  config.data.max_train_records = 0    # 0: all. Else the first K records (public choice).
  config.data.max_eval_records = 256   # Held-out records used for evaluation.
  config.data.eval_batch_size = 64

  # ---- Differential privacy ----
  config.dp = ml_collections.ConfigDict()
  config.dp.enabled = True             # False: non-private baseline (no clip, no noise).
  config.dp.target_epsilon = 8.0       # Calibrate sigma for this epsilon (if noise_multiplier < 0).
  config.dp.noise_multiplier = -1.0    # sigma >= 0 to fix it; < 0 to calibrate.
  config.dp.delta = 1e-5               # Must be < 1/N.
  config.dp.l2_clip_norm = 1.0         # Flat per-example clip norm C.
  config.dp.max_noise_multiplier = 100.0  # A target needing more sigma is refused.
  config.dp.user_sampling = 'uls'      # With data.user_field: uls (users sampled; up to k records averaged, clipped) | els (records sampled, group-accounted)
  config.dp.accountant = 'pld'         # Calibrates and reports epsilon so far: pld | rdp | edgeworth
  config.dp.report_accountants = ('pld', 'rdp', 'edgeworth')  # Final report.
  config.dp.sampling = 'poisson'       # poisson | shuffle (fixed-size; no amplification claimed)
  # Noise: gaussian | lmo (LMO-DP: Laplace with a random inverse scale, Yang et al. 2024).
  # With lmo: each example is clipped in L1 to dp.l1_clip_norm, the noise scale
  # (dp.noise_multiplier x l1_clip_norm) is calibrated with the sound LMO accountant
  # (dpjax.accounting.lmo); dp.accountant / dp.report_accountants do not apply.
  config.dp.mechanism = 'gaussian'
  config.dp.l1_clip_norm = 1.0         # lmo only: per-example L1 clip norm.
  config.dp.lmo = ml_collections.ConfigDict(dict(  # eps' = a1 Gamma(k, theta) + a3 Exp(rate lam) + a4 U[u_a, u_b]
      a1=0.1, k=2.0, theta=1.0, a3=0.1, lam=5.0, a4=0.9, u_a=2.0, u_b=3.0))  # the paper's eps0=3 row
  # The artifact's setting: L2 clip to l2_clip_norm, unit-scale LMO noise, its per-step eps
  # taken as the guarantee. NOT differentially private as claimed; the report says so.
  config.dp.lmo_paper_faithful_not_private = False
  # Research mode: -1 (default) draws the secret randomness (noise, sampling, dropout) from
  # 256 bits of OS entropy. An integer >= 0 derives it from this public seed instead: runs
  # reproduce bit for bit, but the guarantee then holds only against parties who do not
  # know the seed (every output says so).
  config.dp.insecure_fixed_randomness_seed = -1
  # Secret state at rest (noise keys, sampler state) lives in workdir/secret/ (owner-only),
  # never in the checkpoint, metrics or report. False: deleted when the run completes
  # (resume of a finished run then re-reports and exports without it). True: kept.
  config.dp.keep_secret_state = False

  # ---- DP-Adam-AC (Yang 2025): adaptive clipping + clip-driven LR ----
  config.dp_adam_ac = ml_collections.ConfigDict()
  config.dp_adam_ac.enabled = False    # True: DP-Adam-AC instead of DP-AdamW/Adam/SGD.
  config.dp_adam_ac.initial_clip_norm = 1.0  # C_0 (dp.l2_clip_norm unused when enabled).
  config.dp_adam_ac.target_quantile = 0.5    # Target unclipped fraction gamma.
  config.dp_adam_ac.clip_learning_rate = 0.2  # eta in C <- C exp(-eta (b~ - gamma)).
  config.dp_adam_ac.count_noise_std = 0.0    # sigma_b of the count; 0: batch_size / 20.
  config.dp_adam_ac.count_centered = True    # Centered count (sensitivity 1/2).
  config.dp_adam_ac.min_clip_norm = 1e-3     # Clamp of C_t.
  config.dp_adam_ac.max_clip_norm = 100.0
  config.dp_adam_ac.nonprivate_percentile_clipping = False  # Paper's rule: NOT private.
  config.dp_adam_ac.history_size = 1000      # H of the percentile rule.
  config.dp_adam_ac.adapt_learning_rate = True  # Privatized-clip-rate LR multiplier.
  config.dp_adam_ac.lr_band = 0.10
  config.dp_adam_ac.lr_up = 1.01
  config.dp_adam_ac.lr_down = 0.995
  config.dp_adam_ac.lr_min_multiplier = 0.1
  config.dp_adam_ac.lr_max_multiplier = 2.0

  # ---- Optimisation ----
  config.train = ml_collections.ConfigDict()
  config.train.steps = 100
  config.train.batch_size = 64         # Expected batch size B = qN (Poisson) or fixed (shuffle); users per step under ULS.
  config.train.max_batch_size = 96     # Static padded shape B_max (users under ULS); draws above it use 2 chunks.
  config.train.batch_schedule = 'constant'  # constant | linear_ramp (variable q, Poisson only)
  config.train.batch_schedule_start = 0.0   # linear_ramp: B at step 1 (ramps to batch_size).
  config.train.batch_schedule_ramp_steps = 0  # linear_ramp: ramp length (0: all steps).
  config.train.microbatch_size = 8     # Per-example gradients computed m at a time (ULS: m users, m*k records).
  # True skips micro-batches that are all padding: faster, but the step time then reveals
  # the realised batch size (a timing channel that epsilon does not cover).
  config.train.skip_padding_microbatches = False
  # How the clipped sum is computed (dpjax.grad_engines): 'vmap' (per-example gradients),
  # 'bookkeeping' (book-keeping clipping: no per-example gradients; tapped layers only, L2)
  # or 'auto' (book-keeping where every trainable leaf is covered, else vmap). Same mechanism.
  config.train.grad_engine = 'auto'
  config.train.bookkeeping_method = 'auto'  # auto | gram | instantiate (per-example norms)
  # flat (one norm per example) | per_layer (each trainable leaf to C/sqrt(L)) |
  # automatic (Bu et al.: scale by C/(norm + gamma)). Every style has sensitivity C.
  config.train.clip_style = 'flat'
  config.train.automatic_clip_gamma = 0.01
  config.train.optimizer = 'adamw'     # adamw | adam | sgd
  config.train.learning_rate = 1e-3
  config.train.warmup_steps = 0
  config.train.b1 = 0.9
  config.train.b2 = 0.999
  config.train.eps = 1e-8
  config.train.weight_decay = 0.0
  config.train.momentum = 0.0          # sgd only.
  config.train.ema_decay = 0.9         # EMA of parameters used for evaluation/export.
  config.train.log_every = 10
  config.train.log_nonprivate_stats = False  # True: also log train loss / clip fraction of
                                       # private batches (NOT covered by epsilon).
  config.train.eval_every = 50          # Held-out evaluation every k steps (and at step 0 and the end).
  # Besides eval_every: this many evaluations evenly spaced over the run (steps ceil(k T / n),
  # k = 1..n, the last at the final step), so the console and training.png show a curve.
  config.train.evals_during_run = 4
  # Evaluations during the run use the first K held-out records (rounded up to whole
  # data.eval_batch_size batches; the curve 'heldout_subset'); step 0 and the final step use
  # all of data.max_eval_records (and report the subset beside them). 0: all records always.
  config.train.eval_records_during_run = 0
  config.train.eval_ema_during_run = True  # False: evaluations during the run skip the EMA weights
                                       # (half the cost; step 0 and the final step evaluate both).
  config.train.checkpoint_every = 50
  config.train.keep_checkpoints = 2

  # ---- Devices ----
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1                # Devices on the batch axis (-1: all left).
  config.mesh.model = 1                # Devices on the parameter axis.
  config.mesh.param_sharding = 'replicated'  # replicated | fsdp (params + optimizer state over 'data'; docs/scaling.md)
  config.mesh.fsdp_min_size = 1024     # fsdp: leaves with fewer elements stay replicated.
  config.sharding_rules = ()           # ((regex over param path, ('model', None)), ...): win over param_sharding

  # ---- Empirical privacy audit (dpjax.audit.blackbox; causal-LM tasks, Poisson sampling) ----
  # m random secret canary records (tokens and coins from the secret randomness, never from
  # seed), each trained on with probability 1/2; after training the final model's loss on
  # each gives eps_lb, a lower bound on epsilon at confidence 1 - alpha (Steinke et al.
  # 2023), reported beside the claimed epsilon. The canaries are not counted in N.
  config.audit = ml_collections.ConfigDict()
  config.audit.enabled = False
  # m >= 2. 1000: eps_lb saturates near ln(r / ln(1/alpha)) for r guesses, about 5.8 at
  # r = m = 1000 and alpha = 0.05 (3.5 at m = 100), so m = 1000 can show claims up to ~6;
  # the cost is q * m / 2 extra records per step (0.5% of the batch at N = 100,000).
  config.audit.canaries = 1000
  config.audit.canary_tokens = 32      # Tokens per canary (2 .. data.seq_len + 1), padded to seq_len.
  config.audit.alpha = 0.05            # eps_lb holds with probability >= 1 - alpha.
  # False: a run with audit writes no HF/GGUF export (the weights saw the canaries);
  # checkpoints are written as usual. True: export anyway.
  config.audit.export_with_canaries = False

  # ---- Outputs ----
  config.export = ml_collections.ConfigDict()
  config.export.formats = ()           # hf | gguf (written with the EMA weights)
  config.export.gguf_dtype = 'q8_0'    # f32 | f16 | q8_0: matrices in the GGUF (README: sizes, NLL)
  config.export.name = ''              # general.name in the GGUF ('': '<model.path name> DP fine-tune')
  config.plot = True                   # workdir/training.png: held-out loss and epsilon so far.
  config.tensorboard = True            # workdir/tensorboard/: TensorBoard scalars (tensorboardX).
  return config
