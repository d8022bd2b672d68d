"""A `tokenizers.Tokenizer` wrapped in the dpjax tokenizer contract.

The contract (see docs/architecture.md): `.encode(str) -> list[int]`,
`.decode(list[int]) -> str`, `.vocab_size`, `.eos_id`, `.pad_id`.
"""

from __future__ import annotations

import copy

import json
import os
from typing import Any, Sequence

import tokenizers

from dpjax.models import checks

# Names an end-of-sequence token goes by, tried in order when none is given.
_EOS_CANDIDATES = ('<|endoftext|>', '</s>', '<|end_of_text|>', '<eos>',
                   '<|im_end|>', '[SEP]')


def _token_content(token: Any) -> str | None:
  """A special token as written in tokenizer_config.json: str or dict."""
  if isinstance(token, dict):
    return token.get('content')
  return token


def _chat_template(folder: str, tconf: dict[str, Any]) -> str | None:
  """The folder's default chat template: `chat_template.jinja` (what
  `transformers` >= 4.43 writes) or `tokenizer_config.json`'s entry (a
  string, or a list of `{name, template}` where 'default' is used)."""
  path = os.path.join(folder, 'chat_template.jinja')
  if os.path.isfile(path):
    with open(path, encoding='utf-8') as f:
      return f.read()
  value = tconf.get('chat_template')
  if isinstance(value, list):
    named = {t.get('name'): t.get('template') for t in value
             if isinstance(t, dict)}
    value = named.get('default')
  return value if isinstance(value, str) and value else None


class HFTokenizer:
  """A Hugging Face `tokenizers.Tokenizer` with the dpjax contract.

  Attributes:
    tokenizer: the wrapped `tokenizers.Tokenizer`.
    vocab_size: number of ids, added tokens included.
    eos_id: end-of-sequence id.
    pad_id: padding id (the eos id when the tokenizer has no pad token).
    bos_id: beginning-of-sequence id, or None.
    add_special_tokens: whether `encode` runs the tokenizer's post-processor
      (e.g. prepends BOS for Llama-3 style tokenizers).
    chat_template: the Jinja chat template (Instruct models), or None; the
      exports carry it (`tokenizer_config.json`, GGUF
      `tokenizer.chat_template`) so that chat front ends format prompts as
      the model was trained.
  """

  def __init__(self, tokenizer: tokenizers.Tokenizer, *,
               eos_token: str | int | None = None,
               pad_token: str | int | None = None,
               bos_token: str | int | None = None,
               add_special_tokens: bool = False,
               chat_template: str | None = None):
    """Wraps `tokenizer`.

    Args:
      tokenizer: a `tokenizers.Tokenizer`.
      eos_token: the eos token (string or id); default: the first of the
        usual names found in the vocabulary.
      pad_token: the pad token (string or id); default: the eos token.
      bos_token: the bos token (string or id), optional.
      add_special_tokens: passed to `tokenizer.encode`.
      chat_template: the Jinja chat template, optional.

    Raises:
      ValueError: a named token is not in the vocabulary, or no eos token
        can be found.
    """
    if not isinstance(tokenizer, tokenizers.Tokenizer):
      raise ValueError(f'tokenizer must be a tokenizers.Tokenizer, got '
                       f'{type(tokenizer).__name__}')
    # dpjax packs and pads itself: a tokenizer.json's own padding and
    # truncation settings (MiniLM's pads every text to 128) are dropped, so
    # `encode` returns exactly the text's tokens.
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.no_padding()
    tokenizer.no_truncation()
    self.tokenizer = tokenizer
    self.add_special_tokens = bool(add_special_tokens)
    if chat_template is not None and not isinstance(chat_template, str):
      raise ValueError(f'chat_template must be a str, got '
                       f'{type(chat_template).__name__}')
    self.chat_template = chat_template or None
    self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    if eos_token is None:
      vocab = tokenizer.get_vocab(with_added_tokens=True)
      eos_token = next((t for t in _EOS_CANDIDATES if t in vocab), None)
      if eos_token is None:
        raise ValueError('eos_token: none given and none of '
                         f'{list(_EOS_CANDIDATES)} is in the vocabulary')
    self.eos_id = self._to_id(eos_token, 'eos_token')
    self.pad_id = (self.eos_id if pad_token is None
                   else self._to_id(pad_token, 'pad_token'))
    self.bos_id = (None if bos_token is None
                   else self._to_id(bos_token, 'bos_token'))

  def _to_id(self, token: str | int, what: str) -> int:
    if isinstance(token, int):
      if not 0 <= token < self.vocab_size:
        raise ValueError(f'{what}: id {token} is outside [0, '
                         f'{self.vocab_size})')
      return token
    token_id = self.tokenizer.token_to_id(token)
    if token_id is None:
      raise ValueError(f'{what}: {token!r} is not in the vocabulary')
    return token_id

  def encode(self, text: str) -> list[int]:
    """Returns the token ids of `text`."""
    if not isinstance(text, str):
      raise ValueError(f'text must be a str, got {type(text).__name__}')
    return self.tokenizer.encode(
        text, add_special_tokens=self.add_special_tokens).ids

  def decode(self, ids: Sequence[int]) -> str:
    """Returns the text of `ids`, special tokens (pad, eos, ...) skipped."""
    return self.tokenizer.decode([int(i) for i in ids],
                                 skip_special_tokens=True)

  def save(self, folder: str) -> None:
    """Writes `tokenizer.json` and `tokenizer_config.json` into `folder`."""
    os.makedirs(folder, exist_ok=True)
    self.tokenizer.save(os.path.join(folder, 'tokenizer.json'))
    config = {
        'tokenizer_class': 'PreTrainedTokenizerFast',
        'eos_token': self.tokenizer.id_to_token(self.eos_id),
        'pad_token': self.tokenizer.id_to_token(self.pad_id),
        'clean_up_tokenization_spaces': False,
    }
    if self.bos_id is not None:
      config['bos_token'] = self.tokenizer.id_to_token(self.bos_id)
    if self.chat_template is not None:
      config['chat_template'] = self.chat_template
    with open(os.path.join(folder, 'tokenizer_config.json'), 'w') as f:
      json.dump(config, f, indent=2)

  @classmethod
  def from_folder(cls, folder: str,
                  config_json: dict[str, Any] | None = None) -> 'HFTokenizer':
    """Loads `tokenizer.json` (+ `tokenizer_config.json`) from `folder`.

    Special tokens come from `tokenizer_config.json`, else from the model's
    `config_json` ids (`eos_token_id`, `pad_token_id`, `bos_token_id`).
    The tokenizer's own post-processor is applied by `encode` (as
    `transformers` does by default).

    Raises:
      FileNotFoundError: no `tokenizer.json` in `folder`.
      ValueError: `tokenizer.json` or `tokenizer_config.json` cannot be
        parsed, or names special tokens the vocabulary lacks (the message
        names the file).
    """
    path = os.path.join(folder, 'tokenizer.json')
    if not os.path.isfile(path):
      raise FileNotFoundError(f'no tokenizer.json in {folder!r}')
    try:
      tok = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # pylint: disable=broad-except
      # tokenizers raises a bare Exception for unparsable files.
      raise ValueError(f'{path}: not a readable tokenizers file ({e}); the '
                       f'file may be truncated or corrupt') from e
    tconf: dict[str, Any] = {}
    tconf_path = os.path.join(folder, 'tokenizer_config.json')
    if os.path.isfile(tconf_path):
      tconf = checks.read_json_object(tconf_path)
    config_json = config_json or {}

    chat_template = _chat_template(folder, tconf)

    def pick(name):
      token = _token_content(tconf.get(name + '_token'))
      if token is not None and tok.token_to_id(token) is not None:
        return token
      token_id = config_json.get(name + '_token_id')
      if isinstance(token_id, list):
        token_id = token_id[0] if token_id else None
      return token_id

    try:
      return cls(tok, eos_token=pick('eos'), pad_token=pick('pad'),
                 bos_token=pick('bos'), add_special_tokens=True,
                 chat_template=chat_template)
    except ValueError as e:
      source = tconf_path if os.path.isfile(tconf_path) else path
      raise ValueError(f'{source}: {e}') from e

  def __repr__(self) -> str:
    return (f'HFTokenizer(vocab_size={self.vocab_size}, eos_id={self.eos_id}, '
            f'pad_id={self.pad_id})')
