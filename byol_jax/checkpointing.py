"""Step-numbered, atomic, keep-last-N checkpoints of the full training state (Orbax).

A checkpoint holds everything an exact resume needs: the `TrainState` (online and
target params and BN state, optimiser state, step, RNG) plus a small JSON record of
the input position. Orbax writes into a temporary directory and renames it when the
write is complete, so a kill mid-write leaves the previous checkpoints intact and never
a half-written one under a step number; nothing is overwritten in place. A checkpoint
that still fails to read (truncated or damaged on disk) is reported, moved aside to
`<dir>/corrupt-<step>` and the previous one is used.

Layout: `<workdir>/checkpoints/<step>/{state,meta}` and `<workdir>/config.json`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_DIR = 'checkpoints'
CONFIG_FILE = 'config.json'


def _to_numpy(tree: Any) -> Any:
  """Host numpy copy; NamedTuple states are stored as dicts of their fields."""
  if hasattr(tree, '_asdict'):
    tree = tree._asdict()
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


class Checkpointer:
  """Saves and restores host copies (numpy) of a state pytree under `<workdir>/checkpoints`."""

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    self.keep = keep
    self._async = async_save
    self._manager = self._make_manager()

  def _make_manager(self) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=self.keep, create=True,
        enable_async_checkpointing=self._async)
    return ocp.CheckpointManager(self.directory, options=options)

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any, meta: dict) -> None:
    """Writes `state` (a host pytree) and `meta` (JSON) as checkpoint `step`."""
    if step in self._manager.all_steps():
      return  # already saved (e.g. the final step right after a periodic save)
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_to_numpy(state)),
        meta=ocp.args.JsonSave(dict(meta, step=int(step)))))

  def wait(self) -> None:
    """Blocks until an asynchronous save has been committed to disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def restore(self, step: int, template: Any = None) -> tuple[Any, dict]:
    restore_args = (ocp.args.StandardRestore(_to_numpy(template)) if template is not None
                    else ocp.args.StandardRestore())
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=restore_args, meta=ocp.args.JsonRestore()))
    return restored['state'], dict(restored['meta'])

  def restore_latest(self, template: Any = None) -> Optional[tuple[Any, dict]]:
    """The newest readable checkpoint, or None; unreadable ones are reported and set aside."""
    for step in reversed(self.all_steps()):
      try:
        return self.restore(step, template)
      except Exception as error:  # noqa: BLE001 - any read failure means "unusable"
        aside = os.path.join(self.directory, f'corrupt-{step}')
        logging.error('checkpoint %s/%d is unreadable (%s: %s); moving it to %s and '
                      'falling back to the previous one.', self.directory, step,
                      type(error).__name__, error, aside)
        if jax.process_index() == 0:
          os.replace(os.path.join(self.directory, str(step)), aside)
        self._manager = self._make_manager()
    return None


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  with open(path + '.tmp', 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(path + '.tmp', path)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} is missing: {workdir!r} is not a byol-jax workdir '
                            '(byol-jax-train writes config.json there).')
  with open(path) as f:
    raw = json.load(f)
  return ml_collections.ConfigDict(_tuples(raw))


def _tuples(tree: Any) -> Any:
  """JSON lists back to tuples (configs hold ranges as tuples)."""
  if isinstance(tree, dict):
    return {k: _tuples(v) for k, v in tree.items()}
  if isinstance(tree, list):
    return tuple(_tuples(v) for v in tree)
  return tree


@dataclasses.dataclass
class Pretrained:
  """What evaluation and export need from a pretraining checkpoint."""
  config: ml_collections.ConfigDict
  online_params: dict
  online_state: dict
  step: int
  source: str


def _find_workdir(path: str) -> tuple[str, Optional[int]]:
  """Accepts a workdir, its checkpoints/ dir, or one step directory in it."""
  path = os.path.abspath(path)
  if os.path.exists(os.path.join(path, CONFIG_FILE)):
    return path, None
  parent = os.path.dirname(path)
  if os.path.basename(path) == CHECKPOINT_DIR and os.path.exists(
      os.path.join(parent, CONFIG_FILE)):
    return parent, None
  grandparent = os.path.dirname(parent)
  if os.path.basename(parent) == CHECKPOINT_DIR and os.path.basename(path).isdigit():
    return grandparent, int(os.path.basename(path))
  raise FileNotFoundError(
      f'{path!r} is neither a byol-jax workdir (with config.json and checkpoints/) nor a '
      'checkpoint step directory <workdir>/checkpoints/<step>; for an official '
      'DeepMind .pkl checkpoint use byol_jax.official_import.')


def load_pretrained(path: str) -> Pretrained:
  """Online params and BN state of a pretraining run (latest step unless one is named)."""
  workdir, step = _find_workdir(path)
  config = load_config(workdir)
  checkpointer = Checkpointer(workdir, keep=10 ** 6, async_save=False)
  if step is None:
    restored = checkpointer.restore_latest()
    if restored is None:
      raise FileNotFoundError(f'no readable checkpoint under {checkpointer.directory}.')
  else:
    restored = checkpointer.restore(step)
  state, meta = restored
  return Pretrained(config=config, online_params=state['online_params'],
                    online_state=state['online_state'], step=int(meta['step']),
                    source=os.path.join(checkpointer.directory, str(meta['step'])))
