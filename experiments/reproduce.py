"""Shared launcher for the paper-reproduction scripts: pretrain, then linear evaluation.

Each `experiments/<result>.py` names its config, the hardware it was sized for and the
paper's number; this runs the two documented commands in order (resuming either if
its workdir already holds checkpoints) and prints the linear-evaluation result next to
the paper's number.
"""

import argparse
import json
import os
import subprocess
import sys


def run(name: str, pretrain_config: str, paper: str, hardware: str,
        extra_pretrain=(), linear_eval_config: str = 'configs/linear_eval.py',
        extra_linear=()):
  parser = argparse.ArgumentParser(description=f'{name}: {paper}')
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--data_dir', default=None)
  parser.add_argument('--dry_run', action='store_true', help='print the commands only')
  args, passthrough = parser.parse_known_args()
  print(f'{name}\n  paper: {paper}\n  sized for: {hardware}')
  data = [f'--config.data.data_dir={args.data_dir}'] if args.data_dir else []
  pretrain_dir = os.path.join(args.workdir, 'pretrain')
  linear_dir = os.path.join(args.workdir, 'linear_eval')
  commands = [
      [sys.executable, '-m', 'byol_jax.train', f'--config={pretrain_config}',
       f'--workdir={pretrain_dir}', *data, *extra_pretrain, *passthrough],
      [sys.executable, '-m', 'byol_jax.linear_eval', f'--config={linear_eval_config}',
       f'--workdir={linear_dir}', f'--config.pretrained={pretrain_dir}', *data,
       *extra_linear],
  ]
  for command in commands:
    print('  $ ' + ' '.join(command), flush=True)
    if not args.dry_run:
      subprocess.run(command, check=True)
  results = os.path.join(linear_dir, 'results.json')
  if os.path.exists(results):
    print(f'  result: {json.load(open(results))}\n  paper:  {paper}')
