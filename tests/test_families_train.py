"""Every decoder family loads from a local HF folder, trains with DP, exports.

Tiny random checkpoints are written by `transformers` (test-only dependency)
into a temporary folder; the trainer loads them offline, runs DP steps, and
exports the EMA weights as a Hugging Face folder that `transformers` loads
back with the same weights.
"""

import json

import jax
import numpy as np
import pytest

from configs import debug
from dpjax import train

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')


def _tiny(family):
  if family == 'gpt2':
    cfg = transformers.GPT2Config(vocab_size=258, n_positions=64, n_embd=32,
                                  n_layer=2, n_head=4)
    return transformers.GPT2LMHeadModel(cfg)
  if family == 'qwen2':
    cfg = transformers.Qwen2Config(vocab_size=258, hidden_size=32,
                                   intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=64,
                                   rope_parameters={'rope_type': 'linear',
                                                    'factor': 2.0,
                                                    'rope_theta': 1e4})
    return transformers.Qwen2ForCausalLM(cfg)
  if family == 'bitnet':
    cfg = transformers.BitNetConfig(vocab_size=258, hidden_size=32,
                                    intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4,
                                    num_key_value_heads=2,
                                    max_position_embeddings=64)
    return transformers.BitNetForCausalLM(cfg)
  raise ValueError(family)


@pytest.mark.parametrize('family', ['gpt2', 'qwen2', 'bitnet'])
def test_family_trains_with_dp_and_exports(family, tmp_path):
  torch.manual_seed(0)
  src = tmp_path / 'src'
  _tiny(family).save_pretrained(src, safe_serialization=True)
  config = debug.get_config()
  config.model.update(family=family, init='hf', path=str(src))
  config.train.steps = 2
  config.export.formats = ('hf', 'gguf') if family == 'qwen2' else ('hf',)
  out = train.train_and_evaluate(config, str(tmp_path / 'run'))
  rows = {r['accountant']: r for r in out['report']['privacy']['rows']}
  assert rows['pld']['epsilon'] <= config.dp.target_epsilon
  assert np.isfinite(out['final']['eval_loss'])
  exported = tmp_path / 'run' / 'export' / 'hf'
  assert json.loads((exported / 'config.json').read_text())['model_type'] in (
      family, 'bitnet')
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(exported)
  ids = torch.tensor([[1, 2, 3, 4, 5]])
  with torch.no_grad():
    logits = reloaded(ids).logits.numpy()
  assert np.all(np.isfinite(logits))
  # The exported weights are the trained EMA weights, not the initial ones.
  before = _tiny(family)
  before.load_state_dict(
      transformers.AutoModelForCausalLM.from_pretrained(src).state_dict())
  changed = [not torch.equal(a, b) for a, b in zip(
      before.state_dict().values(), reloaded.state_dict().values())]
  assert any(changed)
  if family == 'qwen2':  # scaled RoPE and the GGUF export's metadata
    assert reloaded.config.rope_parameters['rope_type'] == 'linear'
    import gguf  # pylint: disable=g-import-not-at-top
    reader = gguf.GGUFReader(str(tmp_path / 'run' / 'export' / 'model.gguf'))
    field = lambda k: reader.get_field(k).contents()  # noqa: E731
    assert field('general.name') == 'src DP fine-tune'
    assert field('general.base_model.0.name') == 'src'
    assert field('general.file_type') == gguf.LlamaFileType.MOSTLY_Q8_0
    assert field('qwen2.rope.scaling.type') == 'linear'
    assert field('qwen2.rope.scaling.factor') == 2.0


def test_bert_genre_classification_trains_with_dp(tmp_path):
  import shutil
  from dpjax.models import bert
  torch.manual_seed(0)
  src = tmp_path / 'src'
  cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32,
                                num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64,
                                max_position_embeddings=128)
  transformers.BertModel(cfg).save_pretrained(src, safe_serialization=True)
  shutil.copy(f'{bert.minilm_path()}/tokenizer.json', src / 'tokenizer.json')
  config = debug.get_config()
  config.model.update(family='bert', init='hf', path=str(src))
  config.data.update(task='genre', tokenizer='model', seq_len=32,
                     max_train_records=400, max_eval_records=32)
  config.train.steps = 2
  out = train.train_and_evaluate(config, str(tmp_path / 'run'))
  final = out['final']
  assert 0.0 <= final['eval_accuracy'] <= 1.0
  assert np.isfinite(final['eval_loss'])
  assert 'passage' in out['ledger'].unit
