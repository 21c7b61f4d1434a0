r"""Weighted kNN evaluation of a pretrained encoder, as a command.

  python -m byol_jax.knn_eval --config=configs/knn_eval.py[:preset] --workdir=<dir> \
      --config.pretrained=<workdir | step dir | official .pkl | .npz>

The same classifier as the pretraining monitor (`evaluation.knn_metrics`: cosine
similarity of l2-normalised encoder features, the k nearest bank examples vote with
weight exp(sim / T)). Bank: centre crops of `data.train_split`; queries: centre crops
of `data.eval_split` and of `data.test_split`, each reported when set. Nothing is
selected, so both are plain measurements. Writes `<workdir>/results.json`.
"""

from __future__ import annotations

import json
from typing import Optional, Sequence

import ml_collections

from byol_jax import checkpointing
from byol_jax import evaluation
from byol_jax import input_pipeline
from byol_jax import linear_eval
from byol_jax import metric_writers
from byol_jax import update


def evaluate(config: ml_collections.ConfigDict, workdir: str,
             pretrained: Optional[checkpointing.Pretrained] = None) -> dict:
  """kNN accuracy on the eval and test splits; writes and returns the results."""
  if config.knn.k < 1 or config.knn.temperature <= 0:
    raise ValueError(f'knn.k={config.knn.k!r} must be >= 1 and knn.temperature='
                     f'{config.knn.temperature!r} > 0.')
  pretrained = linear_eval.load_encoder_source(config, pretrained)
  data = config.data
  num_classes = input_pipeline.num_classes(data)
  features_fn = linear_eval.encoder_features_fn(pretrained.config.model)
  params, state = update.replicate((pretrained.online_params, pretrained.online_state))
  batch_size = linear_eval.eval_batch_size(config)

  def features(data_config, split):
    metric_writers.progress('kNN: features of %s %s', data_config.dataset, split)
    return linear_eval.split_features(data_config, split, batch_size, features_fn,
                                      params, state)

  bank = features(data, data.train_split)
  results = dict(protocol='knn', pretrained=dict(
      source=pretrained.source, step=pretrained.step,
      model=pretrained.config.model.to_dict(),
      random_init=bool(config.get('random_init', False))),
      config=json.loads(config.to_json_best_effort()), num_classes=num_classes,
      bank=dict(split=data.train_split, num_examples=int(bank.labels.shape[0])))
  for key, data_config, split in (('validation', linear_eval.validation_data(data),
                                   data.eval_split), ('test', data, data.test_split)):
    if not split:
      results[key] = None
      continue
    queries = features(data_config, split)
    metrics = evaluation.knn_metrics(bank, queries, num_classes=num_classes,
                                     k=config.knn.k, temperature=config.knn.temperature)
    results[key] = dict(top1_accuracy=metrics['knn_top1_accuracy'],
                        top5_accuracy=metrics['knn_top5_accuracy'],
                        num_examples=int(queries.labels.shape[0]), split=split)
    metric_writers.progress('kNN %s (%s): %s', key, split, results[key])
  results['status'] = 'done'
  linear_eval.write_results(workdir, results)
  return results


def run(argv: Optional[Sequence[str]] = None) -> None:
  """Console entry point."""
  linear_eval.cli_main(evaluate, 'configs/knn_eval.py', argv)


if __name__ == '__main__':
  run()
