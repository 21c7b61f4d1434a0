"""One process of the multi-host test (run by test_multihost.py, not by pytest itself).

usage: multihost_worker.py PROCESS_ID NUM_PROCESSES LOCAL_DEVICES PORT OUT_DIR
Every process feeds its slice of the same deterministic global batches, runs 3
updates, checkpoints with Orbax (all processes take part) and process 0 saves the
resulting state to OUT_DIR/state.npz.
"""

import os
import sys

process_id, num_processes, local_devices, port = map(int, sys.argv[1:5])
out_dir = sys.argv[5]
os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={local_devices}'
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import numpy as np  # noqa: E402

if num_processes > 1:
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}',
                             num_processes=num_processes, process_id=process_id)

from byol_jax import checkpointing  # noqa: E402
from byol_jax import update  # noqa: E402
import conftest  # noqa: E402

IMAGE = 16
config = conftest.tiny_config(IMAGE)
settings = update.settings_from_config(config, 80, num_classes=10)
network, optimizer, update_fn = update.build(config, settings)
step = update.pmap_update(update_fn)
state = update.replicate(update.init_state(config, network, optimizer, IMAGE))
per_process = config.training.batch_size // num_processes
for s in range(3):
  batch = conftest.random_batch(config.training.batch_size, IMAGE, seed=s)
  mine = {k: v[process_id * per_process:(process_id + 1) * per_process]
          for k, v in batch.items()}
  state, metrics = step(state, conftest.shard(mine, jax.local_device_count()))
host_state = update.unreplicate(state)
checkpointer = checkpointing.Checkpointer(os.path.join(out_dir, 'workdir'), async_save=False)
checkpointer.save(3, host_state, {'epoch': 0})
checkpointer.wait()
restored, meta = checkpointer.restore_latest(template=host_state)
assert meta['step'] == 3
for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(host_state._asdict())):
  assert np.array_equal(a, b)
if process_id == 0:
  flat = {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(host_state)[0]}
  flat['loss'] = np.asarray(metrics['loss'][0])
  np.savez(os.path.join(out_dir, 'state.npz'), **flat)
print(f'process {process_id}: done', flush=True)
