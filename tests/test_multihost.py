"""2 processes x 2 CPU devices (gloo collectives on 127.0.0.1) equal 1 process x 4."""

import os
import socket
import subprocess
import sys

import numpy as np

from conftest import REPO

WORKER = os.path.join(os.path.dirname(__file__), 'multihost_worker.py')


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _launch(num_processes, local_devices, out_dir):
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  procs = [subprocess.Popen(
      [sys.executable, WORKER, str(p), str(num_processes), str(local_devices), str(port),
       str(out_dir)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
      for p in range(num_processes)]
  outputs = [p.communicate(timeout=600)[0].decode() for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-4000:]
  return dict(np.load(os.path.join(out_dir, 'state.npz')))


def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path):
  (tmp_path / 'multi').mkdir()
  (tmp_path / 'single').mkdir()
  multi = _launch(2, 2, tmp_path / 'multi')
  single = _launch(1, 4, tmp_path / 'single')
  assert multi.keys() == single.keys()
  np.testing.assert_allclose(multi['loss'], single['loss'], rtol=0, atol=4e-6)
  for key in single:
    tolerance = 7e-6 if 'state' in key else 2e-6
    np.testing.assert_allclose(multi[key], single[key], rtol=0, atol=tolerance, err_msg=key)
  assert int(multi['.step']) == 3
