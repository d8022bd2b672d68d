"""Orbax checkpoints holding everything the privacy ledger depends on.

A checkpoint has two items:
  'state': the `TrainState` (step, trainable params, the full optimizer state
           including the noise PRNG key and the EMA) and the frozen params;
  'meta':  JSON with the sampler state (NumPy bit generator), the privacy
           ledger, the noise multiplier used, and the config fingerprint.
Restoring both and continuing gives exactly the parameters and epsilon of an
uninterrupted run (tested). Saves are atomic (orbax writes to a temporary
directory and renames), so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` for dpjax runs."""

  def __init__(self, directory: str, keep: int):
    self.directory = os.path.abspath(directory)
    self._mngr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    self._mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def restore(self, step: int, target: Any) -> tuple[Any, dict[str, Any]]:
    """Restores onto `target`'s structure, shardings and dtypes."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    out = self._mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        meta=ocp.args.JsonRestore()))
    return out['state'], out['meta']

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()
