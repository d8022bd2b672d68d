"""Task encoders: instruction pairs (causal LM, loss on the response only) and
sequence classification (single sentences and sentence pairs).

Outputs follow the dataset contract of `docs/architecture.md`:
  instruction: `{'inputs', 'targets': [N, T] int32,
                 'weights': [N, T] float32}`;
  classification: `{'inputs', 'attention_mask': [N, T] int32,
                    'label': [N] int32}`
  plus `'token_type_ids': [N, T] int32` for sentence pairs.

Privacy unit:
  One prompt/response pair, or one (sentence, label) / (pair, label)
  example, is one row and one record: the unit of the neighbouring relation.
  The prompt of an instruction record is part of the record even though it
  carries no loss weight (its tokens still shape the gradient through
  attention), so the guarantee covers the prompt too.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, Union

import numpy as np

DEFAULT_TEMPLATE = '### Instruction:\n{prompt}\n\n### Response:\n'

# A template is a Python format string with '{prompt}', a Jinja chat template
# (as in a Hugging Face tokenizer's `chat_template`), or a callable
# `prompt -> prompt text` (the response text follows it unchanged).
Template = Union[str, Callable[[str], str], None]


def _render_jinja(template: str, prompt: str, response: str,
                  special: dict[str, str]) -> tuple[str, str]:
  """(prompt text, response text) from a Jinja chat template."""
  try:
    from jinja2.sandbox import ImmutableSandboxedEnvironment
  except ImportError as e:  # pragma: no cover - jinja2 is a dependency (setup.cfg)
    raise ImportError(
        'a Jinja chat template needs jinja2: pip install jinja2') from e

  def raise_exception(message):
    raise ValueError(f'chat template: {message}')

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
  env.globals['raise_exception'] = raise_exception
  tmpl = env.from_string(template)
  user = [{'role': 'user', 'content': prompt}]
  head = tmpl.render(messages=user, add_generation_prompt=True, **special)
  answer = {'role': 'assistant', 'content': response}
  full = tmpl.render(messages=user + [answer], add_generation_prompt=False,
                     **special)
  if not full.startswith(head):
    raise ValueError(
        'template: the chat template renders the conversation with the '
        'answer differently from the generation prompt, so the response '
        'tokens cannot be located; pass a callable instead')
  return head, full[len(head):]


def apply_template(
    template: Template, prompt: str, response: str, *,
    special_tokens: dict[str, str] | None = None) -> tuple[str, str]:
  """Splits one example into (prompt text, response text) under a template.

  Args:
    template: None (the plain `DEFAULT_TEMPLATE`), a format string with
      '{prompt}', a Jinja chat template string (recognized by '{%' or
      'messages'), or a callable `prompt -> prompt text`.
    prompt: the instruction.
    response: the answer.
    special_tokens: names available to a Jinja template (e.g. `bos_token`,
      `eos_token`); defaults to empty strings.

  Returns:
    (prompt_text, response_text); the loss counts on the response only.
  """
  if template is None:
    template = DEFAULT_TEMPLATE
  if callable(template):
    return template(prompt), response
  if not isinstance(template, str):
    raise ValueError(f'template must be None, a str or a callable, got '
                     f'{type(template).__name__}')
  if '{%' in template or 'messages' in template:
    special = {'bos_token': '', 'eos_token': ''}
    special.update(special_tokens or {})
    return _render_jinja(template, prompt, response, special)
  if '{prompt}' not in template:
    raise ValueError(f'template {template!r} has no {{prompt}} field and is '
                     'not a Jinja chat template')
  return template.replace('{prompt}', prompt), response


def template_specials(tokenizer: Any) -> dict[str, str]:
  """The `bos_token`/`eos_token` strings a tokenizer offers a Jinja template."""
  return {name: getattr(tokenizer, name) for name in ('bos_token', 'eos_token')
          if isinstance(getattr(tokenizer, name, None), str)}


def instruction_ids(prompt: str, response: str, tokenizer: Any, *,
                    template: Template = None,
                    special: dict[str, str] | None = None,
                    add_eos: bool = True) -> tuple[list[int], list[int]]:
  """(prompt ids, response ids) of one pair under `template`.

  The prompt text and the response text (see `apply_template`) are encoded
  separately; `tokenizer.eos_id` follows the response if `add_eos`.
  """
  p_text, r_text = apply_template(template, prompt, response,
                                  special_tokens=special)
  p_ids = list(tokenizer.encode(p_text))
  r_ids = list(tokenizer.encode(r_text))
  if add_eos:
    r_ids.append(tokenizer.eos_id)
  return p_ids, r_ids


def layout_instruction(id_pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
                       seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
  """Rows `prompt + response` shifted and padded, weights on the response.

  Row i is `p_i + r_i` cut to `seq_len + 1` tokens (the end of a long
  response is lost); weight 1 exactly where the target is a response token.

  Raises:
    ValueError: an empty response, or a prompt that leaves no room for a
      response target (naming the example index).
  """
  n = len(id_pairs)
  inputs = np.full((n, seq_len), pad_id, np.int32)
  targets = np.full((n, seq_len), pad_id, np.int32)
  weights = np.zeros((n, seq_len), np.float32)
  for i, (p_ids, r_ids) in enumerate(id_pairs):
    p_ids, r_ids = list(p_ids), list(r_ids)
    if not r_ids:
      raise ValueError(f'examples[{i}]: empty response and add_eos=False: '
                       'nothing to train on')
    if len(p_ids) >= seq_len + 1 or not p_ids:
      raise ValueError(
          f'examples[{i}]: the prompt has {len(p_ids)} tokens; it needs at '
          f'least 1 and at most seq_len = {seq_len} to leave a response target')
    row = (p_ids + r_ids)[:seq_len + 1]
    m = len(row) - 1
    inputs[i, :m] = row[:-1]
    targets[i, :m] = row[1:]
    # target t is row[t + 1]; it is a response token iff t + 1 >= len(p_ids)
    weights[i, len(p_ids) - 1:m] = 1.0
  return {'inputs': inputs, 'targets': targets, 'weights': weights}


def encode_instruction(
    examples: Sequence[Any],
    tokenizer: Any,
    seq_len: int,
    *,
    template: Template = None,
    add_eos: bool = True,
) -> dict[str, np.ndarray]:
  """Encodes prompt/response pairs, one per row, loss on the response only.

  Row i is `encode(prompt_text) + encode(response_text) [+ eos]`, shifted into
  inputs/targets and padded with `tokenizer.pad_id`; weight 1 exactly where
  the target is a response token (or the eos). Rows longer than `seq_len + 1`
  lose the end of their response.

  Args:
    examples: (prompt, response) pairs or dicts with 'prompt' and 'response'.
    tokenizer: has `.encode`, `.eos_id`, `.pad_id`.
    seq_len: T.
    template: see `apply_template`.
    add_eos: append `tokenizer.eos_id` after the response.

  Returns:
    The causal-LM dataset dict with N = len(examples).

  Raises:
    ValueError: no examples, a malformed example, or a prompt that leaves no
      room for a response token (naming the example index).
  """
  if len(examples) == 0:
    raise ValueError('examples is empty: no instruction records')
  special = template_specials(tokenizer)
  pairs = []
  for i, ex in enumerate(examples):
    if isinstance(ex, dict):
      prompt, response = ex.get('prompt'), ex.get('response')
    else:
      prompt, response = ex
    if not isinstance(prompt, str) or not isinstance(response, str):
      raise ValueError(f'examples[{i}]: prompt and response must be strings')
    pairs.append(instruction_ids(prompt, response, tokenizer,
                                 template=template, special=special,
                                 add_eos=add_eos))
  return layout_instruction(pairs, seq_len, tokenizer.pad_id)


def _truncate_pair(a: list[int], b: list[int],
                   budget: int) -> tuple[list[int], list[int]]:
  """Longest-first truncation: drop the last token of the longer side."""
  a, b = list(a), list(b)
  while len(a) + len(b) > budget:
    if len(a) >= len(b):
      a.pop()
    else:
      b.pop()
  return a, b


def encode_classification(
    texts: Sequence[str] | Sequence[tuple[str, str]],
    labels: Sequence[int],
    tokenizer: Any,
    seq_len: int,
    *,
    cls_id: int | None = None,
    sep_id: int | None = None,
) -> dict[str, np.ndarray]:
  """Encodes sentences or sentence pairs for sequence classification.

  Layout (BERT style when `cls_id`/`sep_id` are a BERT tokenizer's):
  single: `[cls] a [sep]`; pair: `[cls] a [sep] b [sep]`, with
  token_type_ids 0 on `[cls] a [sep]` and 1 on `b [sep]`. `sep_id` defaults to
  `tokenizer.eos_id`; no cls token unless given. Sentences are truncated
  (longest first for pairs) to fit `seq_len`; padding uses `tokenizer.pad_id`
  with attention_mask 0. `tokenizer.encode` must return plain tokens: a
  tokenizer whose post-processor adds [CLS]/[SEP] itself (e.g.
  `HFTokenizer(..., add_special_tokens=True)`) would add them twice; use
  one without and pass `cls_id`/`sep_id`.

  Args:
    texts: strings, or (text_a, text_b) pairs (all of one kind).
    labels: integer class labels, one per text.
    tokenizer: has `.encode`, `.pad_id` (and `.eos_id` if no `sep_id`).
    seq_len: T.
    cls_id: optional id prepended to every row.
    sep_id: id after each sentence; default `tokenizer.eos_id`.

  Returns:
    `{'inputs', 'attention_mask', 'label'}` (+ `'token_type_ids'` for pairs).

  Raises:
    ValueError: empty input, mismatched lengths, mixed single/pair input,
      non-integer labels, or seq_len too small for the special tokens.
  """
  n = len(texts)
  if n == 0:
    raise ValueError('texts is empty: no classification records')
  if len(labels) != n:
    raise ValueError(f'labels has {len(labels)} entries for {n} texts')
  pair = not isinstance(texts[0], str)
  sep = tokenizer.eos_id if sep_id is None else sep_id
  head = [] if cls_id is None else [int(cls_id)]
  n_special = len(head) + (2 if pair else 1)
  if seq_len <= n_special:
    raise ValueError(f'seq_len={seq_len} leaves no room for text after '
                     f'{n_special} special tokens')
  try:
    label_arr = np.asarray(labels)
    if label_arr.dtype.kind not in 'iub' and not np.all(
        label_arr == np.round(label_arr)):
      raise TypeError
    label_arr = label_arr.astype(np.int32)
  except (TypeError, ValueError) as e:
    raise ValueError('labels must be integers (map label names to ids first, '
                     'e.g. with dpjax.data.formats)') from e
  inputs = np.full((n, seq_len), tokenizer.pad_id, np.int32)
  mask = np.zeros((n, seq_len), np.int32)
  types = np.zeros((n, seq_len), np.int32)
  for i, t in enumerate(texts):
    if pair != (not isinstance(t, str)):
      raise ValueError(f'texts[{i}]: mixes single sentences and pairs')
    if pair:
      a, b = _truncate_pair(tokenizer.encode(t[0]), tokenizer.encode(t[1]),
                            seq_len - n_special)
      first = head + a + [sep]
      row = first + b + [sep]
      types[i, len(first):len(row)] = 1
    else:
      row = head + list(tokenizer.encode(t))[:seq_len - n_special] + [sep]
    inputs[i, :len(row)] = row
    mask[i, :len(row)] = 1
  out = {'inputs': inputs, 'attention_mask': mask, 'label': label_arr}
  if pair:
    out['token_type_ids'] = types
  return out


def encode_records(
    data: Any,
    tokenizer: Any,
    seq_len: int,
    *,
    pack: bool = True,
    template: Template = None,
    cls_id: int | None = None,
    sep_id: int | None = None,
) -> dict[str, np.ndarray]:
  """Encodes a `dpjax.data.formats.LoadedData` by its kind.

  Args:
    data: has `.kind` ('text', 'instruction' or 'classification') and
      `.records` (see `dpjax.data.formats`).
    tokenizer: the dpjax tokenizer contract.
    seq_len: T.
    pack: for 'text', pack documents into chunks (`pack_causal_lm`, record =
      chunk) or keep one document per row (`pad_causal_lm`, record =
      document).
    template: for 'instruction', see `apply_template`.
    cls_id: for 'classification', see `encode_classification`.
    sep_id: for 'classification', see `encode_classification`.

  Returns:
    The dataset dict of the kind's contract.
  """
  from dpjax.data import packing  # pylint: disable=import-outside-toplevel
  recs = data.records
  if data.kind == 'text':
    fn = packing.pack_causal_lm if pack else packing.pad_causal_lm
    return fn([tokenizer.encode(r['text']) for r in recs], seq_len,
              eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
  if data.kind == 'instruction':
    return encode_instruction(recs, tokenizer, seq_len, template=template)
  if data.kind == 'classification':
    pairs = 'text_b' in recs[0]
    texts = [(r['text_a'], r['text_b']) if pairs else r['text_a']
             for r in recs]
    return encode_classification(texts, [r['label'] for r in recs], tokenizer,
                                 seq_len, cls_id=cls_id, sep_id=sep_id)
  raise ValueError(f'data.kind={data.kind!r}: expected text, instruction or '
                   'classification')
