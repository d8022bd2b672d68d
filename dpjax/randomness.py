"""Secret randomness: the one place the noise, sampling and dropout keys come from.

A run's randomness falls into two kinds:

* **public**: parameter and LoRA initialisation, RGP's random starts, data
  splits, evaluation order, canary candidates. Seeded by `config.seed`; an
  adversary may know it.
* **secret**: the noise added to the clipped sum (Gaussian, LMO, DP-Adam-AC's
  count noise), the Poisson sampler's generator and the per-record dropout
  masks. The DP guarantee holds only if these are unknown to the adversary.

`SecretRandomness` holds the secret seed material (32 bytes) and derives one
independent stream per purpose from it (HMAC-SHA256). By default the material
is drawn from the operating system's entropy (`os.urandom`, 256 bits); the
research mode `dp.insecure_fixed_randomness_seed >= 0` derives it from that
public integer instead, which makes runs reproducible bit for bit and voids the
guarantee against anyone who knows the seed (every output says so).

A later multi-host run draws the material on process 0 and broadcasts it
(`to_bytes` / `from_bytes`): keep it in this object, nowhere else.

Formal guarantees:
  Under the default (OS entropy), the noise key is a 128-bit `rbg` key and the
  sampler's PCG64 generator is seeded from 256 bits, both derived from 256 bits
  of OS entropy by HMAC-SHA256 with distinct labels, so the streams are
  computationally independent of each other and of everything public (config,
  code, data). Per-record dropout keys are `threefry2x32` keys (64 bits:
  `rbg` keys are not invariant under `vmap`, which would make a record's
  dropout mask depend on its batch slot); dropout secrecy is not needed for the
  sensitivity bound (clipping holds for every fixed mask), only for hygiene.
  The material never leaves this object except through `to_bytes` (for the
  owner-only secret store, `dpjax.secret_store`). Not modelled: the quality of
  the OS entropy source, floating-point attacks on the noise sampler.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os

import jax
import jax.numpy as jnp
import numpy as np

SEED_BYTES = 32
NOISE_KEY_IMPL = 'rbg'             # 128-bit key data (4 x uint32)
DROPOUT_KEY_IMPL = 'threefry2x32'  # vmap-invariant (per-record keys)
_INSECURE_LABEL = b'dpjax insecure fixed randomness seed v1:'


def insecure_seed_warning(seed: int) -> str:
  """The warning every output of a run on an insecure fixed seed carries."""
  return ('INSECURE FIXED RANDOMNESS: dp.insecure_fixed_randomness_seed='
          f'{seed}; the guarantee holds only against parties who do not know '
          'that seed')


@dataclasses.dataclass(frozen=True, repr=False)
class SecretRandomness:
  """Secret seed material and the keys derived from it.

  Attributes:
    material: 32 secret bytes.
    insecure_fixed_seed: the public integer the material was derived from
      (research mode), or None when it came from OS entropy.
  """
  material: bytes
  insecure_fixed_seed: int | None = None

  def __post_init__(self):
    if len(self.material) != SEED_BYTES:
      raise ValueError(f'secret material must be {SEED_BYTES} bytes, got '
                       f'{len(self.material)}.')

  def __repr__(self) -> str:  # never print the material
    src = ('os_entropy' if self.insecure_fixed_seed is None else
           f'insecure_fixed_seed={self.insecure_fixed_seed}')
    return f'SecretRandomness({src})'

  @classmethod
  def from_os_entropy(cls) -> SecretRandomness:
    return cls(os.urandom(SEED_BYTES), None)

  @classmethod
  def from_insecure_seed(cls, seed: int) -> SecretRandomness:
    if not (isinstance(seed, int) and seed >= 0):
      raise ValueError(f'insecure fixed seed must be an int >= 0, got {seed!r}.')
    material = hashlib.sha256(_INSECURE_LABEL + str(seed).encode()).digest()
    return cls(material, int(seed))

  @classmethod
  def from_config(cls, dp_config) -> SecretRandomness:
    """OS entropy unless `dp.insecure_fixed_randomness_seed >= 0`."""
    seed = int(dp_config.insecure_fixed_randomness_seed)
    if seed >= 0:
      return cls.from_insecure_seed(seed)
    return cls.from_os_entropy()

  def rekeyed(self, label: str) -> SecretRandomness:
    """New material independent of this one's streams: fresh OS entropy, or
    (research mode) derived from the material and `label`, so a resumed run
    that lost its secret state never reuses the noise of earlier steps."""
    if not self.is_insecure:
      return SecretRandomness.from_os_entropy()
    return SecretRandomness(self._derive('rekey/' + label, SEED_BYTES),
                            self.insecure_fixed_seed)

  @property
  def is_insecure(self) -> bool:
    return self.insecure_fixed_seed is not None

  def to_bytes(self) -> bytes:
    return self.material

  def _derive(self, label: str, n_bytes: int) -> bytes:
    out = b''
    counter = 0
    while len(out) < n_bytes:
      out += hmac.new(self.material, f'{label}/{counter}'.encode(),
                      hashlib.sha256).digest()
      counter += 1
    return out[:n_bytes]

  def _key(self, label: str, impl: str) -> jax.Array:
    n_words = {'rbg': 4, 'threefry2x32': 2}[impl]
    words = np.frombuffer(self._derive(label, 4 * n_words), dtype='<u4')
    return jax.random.wrap_key_data(jnp.asarray(words, jnp.uint32),
                                    impl=impl)

  def noise_key(self) -> jax.Array:
    """128-bit key for every noise stage (Gaussian, LMO, count noise)."""
    return self._key('noise', NOISE_KEY_IMPL)

  def dropout_key(self) -> jax.Array:
    """Root of the per-record dropout keys (`dpjax.steps.record_keys`)."""
    return self._key('dropout', DROPOUT_KEY_IMPL)

  def sampler_seed(self) -> np.random.SeedSequence:
    """256-bit seed of the batch sampler's generator."""
    return np.random.SeedSequence(
        int.from_bytes(self._derive('sampler', 32), 'little'))

  def describe(self) -> dict:
    """Public description (no key material) for the report and metrics."""
    if self.is_insecure:
      return {'source': 'insecure_fixed_seed',
              'insecure_fixed_randomness_seed': self.insecure_fixed_seed}
    return {'source': 'os_entropy', 'insecure_fixed_randomness_seed': None}

  def warning(self) -> str | None:
    """The line every output carries in the research mode."""
    if not self.is_insecure:
      return None
    return insecure_seed_warning(self.insecure_fixed_seed)
