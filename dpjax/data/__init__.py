"""Corpora, tasks, tokenization, packing and user file formats (pure NumPy).

Modules (import the one you need; this package imports nothing eagerly):
  shakespeare: the embedded corpus, its file -> work table, split by work.
  tokenizers: `ByteTokenizer` (the dpjax tokenizer contract).
  packing: causal-LM records, packed (`pack_causal_lm`) or one document per
    row (`pad_causal_lm`).
  tasks: instruction pairs (loss on the response) and sequence
    classification encoders; `encode_records` for loaded user data.
  formats: .txt folders, JSON lines, CSV/TSV (GLUE layouts, or named
    fields with `Fields`); `check_dataset_size`.
  user_files: your files from `config.data` (corpus 'files'): the public
    held-out split, one record per row, the user index for user-level DP.
  classification: Shakespeare passages labelled by genre, split by work.
  records: synthetic private records and secret canaries.
  exposure: canary exposure ("The Secret Sharer").

A dataset is a `dict[str, np.ndarray]` whose arrays share the leading length
N, the number of records: one row is one record, the privacy unit.
"""
