"""kNN evaluation command: exact bank/query plumbing, the CLI on a byol-jax workdir,
and the at-initialisation baseline."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np

from byol_jax import checkpointing
from byol_jax import knn_eval
from byol_jax import linear_eval
from test_linear_eval import load_config, small_demo
from test_official_import import synthetic_pretrained, tiny_model

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_one_nearest_neighbour_of_the_bank_itself_is_exact(tmp_path):
  config = small_demo(load_config('knn_eval', 'demo'))
  config.data.train_split = config.data.eval_split = 'train[:96]'
  config.knn.k = 1
  results = knn_eval.evaluate(config, str(tmp_path), synthetic_pretrained(tiny_model()))
  assert results['bank'] == dict(split='train[:96]', num_examples=96)
  assert results['validation']['top1_accuracy'] == 1.0  # each query finds itself
  assert results['test']['num_examples'] == 64 and results['test']['top1_accuracy'] < 1.0
  assert json.loads((tmp_path / 'results.json').read_text())['test'] == results['test']


def test_cli_on_a_pretraining_workdir(tmp_path):
  pretrained = synthetic_pretrained(tiny_model())
  workdir = str(tmp_path / 'pretrain')
  checkpointing.save_config(workdir, pretrained.config)
  checkpointer = checkpointing.Checkpointer(workdir, async_save=False)
  checkpointer.save(42, {'online_params': pretrained.online_params,
                         'online_state': pretrained.online_state}, meta={})
  checkpointer.close()
  out = tmp_path / 'knn'
  process = subprocess.run(
      [sys.executable, '-m', 'byol_jax.knn_eval', '--config=configs/knn_eval.py:demo',
       f'--workdir={out}', f'--config.pretrained={workdir}', '--config.data.image_size=16',
       '--config.knn.k=20'],
      cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=300)
  assert process.returncode == 0, process.stderr[-3000:]
  results = json.loads((out / 'results.json').read_text())
  assert results['pretrained']['step'] == 42
  assert results['pretrained']['source'].endswith(os.path.join('checkpoints', '42'))
  assert results['bank']['num_examples'] == 2048
  assert 0. <= results['test']['top1_accuracy'] <= results['test']['top5_accuracy'] <= 1.
  assert '"test"' in process.stdout


def test_random_init_is_the_step0_network_with_first_batch_statistics():
  config = small_demo(load_config('knn_eval', 'demo'))
  config.random_init = True
  pretrained = synthetic_pretrained(tiny_model())
  initial = linear_eval.load_encoder_source(config, pretrained)
  assert initial.step == 0 and 'initialisation' in initial.source
  conv = 'tiny_res_net/~/initial_conv'
  assert not np.allclose(initial.online_params[conv]['w'], pretrained.online_params[conv]['w'])
  var = initial.online_state['tiny_res_net/~/initial_batchnorm/~/var_ema']['average']
  assert np.all(var > 0)  # statistics of real images, usable in inference mode
