"""Evaluation of an encoder: the online classifier and a weighted kNN classifier.

Both run data-parallel over all devices (pmap) on centre crops with BN in inference
mode, and are exact over the split: the input pipeline pads the last batch and marks
padding with mask=False, and every count is a masked sum reduced over all devices and
hosts, so no example is dropped or counted twice.

kNN (Wu et al. 2018, as used by DINO/solo-learn): cosine similarity between
l2-normalised encoder features, the k nearest training examples vote with weight
exp(sim / T); k=200, T=0.1 by default.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Mapping, NamedTuple, Optional

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from byol_jax import losses

AXIS = 'i'


def make_features_fn(network: hk.TransformedWithState):
  """pmapped (params, state, images) -> embeddings and classifier logits, inference mode."""

  def features(params, state, images):
    out, _ = network.apply(params, state, images, False)
    return {'embedding': out['embedding'], 'logits': out['logits']}

  return jax.pmap(features, axis_name=AXIS)


class Features(NamedTuple):
  embeddings: np.ndarray   # float32 [N, D], every example of the split, in order
  labels: np.ndarray       # int32 [N]
  logits: np.ndarray       # float32 [N, C] of the online classifier


def extract_features(features_fn, params, state,
                     batches: Iterable[Mapping[str, np.ndarray]]) -> Features:
  """Runs the encoder over one pass of eval batches; padding is dropped by the mask.

  `params`/`state` are replicated over local devices. With several processes every
  process returns the features of the whole split (gathered over hosts).
  """
  embeddings, labels, logits, masks = [], [], [], []
  for batch in batches:
    out = features_fn(params, state, batch['images'])
    embeddings.append(np.asarray(out['embedding']).reshape(-1, out['embedding'].shape[-1]))
    logits.append(np.asarray(out['logits']).reshape(-1, out['logits'].shape[-1]))
    labels.append(np.asarray(batch['labels']).reshape(-1))
    masks.append(np.asarray(batch['mask']).reshape(-1))
  if not embeddings:
    raise ValueError('the evaluation split is empty: no batches to evaluate.')
  local = dict(embeddings=np.concatenate(embeddings), labels=np.concatenate(labels),
               logits=np.concatenate(logits), mask=np.concatenate(masks))
  if jax.process_count() > 1:
    gathered = multihost_utils.process_allgather(local)
    local = {k: v.reshape((-1,) + v.shape[2:]) for k, v in gathered.items()}
  keep = local['mask'].astype(bool)
  return Features(embeddings=local['embeddings'][keep].astype(np.float32),
                  labels=local['labels'][keep].astype(np.int32),
                  logits=local['logits'][keep].astype(np.float32))


def classifier_metrics(features: Features) -> dict[str, float]:
  """Top-1/top-5 and cross-entropy of the online classifier on the split."""
  logits, labels = jnp.asarray(features.logits), jnp.asarray(features.labels)
  return {
      'top1_accuracy': float(jnp.mean(losses.topk_correct(logits, labels, 1))),
      'top5_accuracy': float(jnp.mean(losses.topk_correct(logits, labels, 5))),
      'classif_loss': float(losses.softmax_cross_entropy(logits, labels)),
      'num_examples': int(labels.shape[0]),
  }


def knn_predict_scores(train: Features, test: Features, *, num_classes: int, k: int = 200,
                       temperature: float = 0.1, chunk: int = 1024) -> np.ndarray:
  """Class scores [N_test, C] of the weighted kNN; exact top-k over the whole bank."""
  if train.embeddings.shape[0] == 0:
    raise ValueError('the kNN training split is empty.')
  k = min(k, train.embeddings.shape[0])
  bank = jnp.asarray(losses.l2_normalize(jnp.asarray(train.embeddings)))
  bank_onehot = jax.nn.one_hot(jnp.asarray(train.labels), num_classes)

  @jax.jit
  def scores(queries):
    similarity = losses.l2_normalize(queries) @ bank.T
    top_sim, top_idx = jax.lax.top_k(similarity, k)
    weights = jnp.exp(top_sim / temperature)
    return jnp.einsum('nk,nkc->nc', weights, bank_onehot[top_idx])

  out = []
  for start in range(0, test.embeddings.shape[0], chunk):
    queries = test.embeddings[start:start + chunk]
    padded = np.zeros((chunk, queries.shape[1]), np.float32)
    padded[:len(queries)] = queries  # one compiled shape for every chunk
    out.append(np.asarray(scores(jnp.asarray(padded)))[:len(queries)])
  return np.concatenate(out)


def knn_metrics(train: Features, test: Features, *, num_classes: int, k: int = 200,
                temperature: float = 0.1) -> dict[str, float]:
  scores = jnp.asarray(knn_predict_scores(train, test, num_classes=num_classes, k=k,
                                          temperature=temperature))
  labels = jnp.asarray(test.labels)
  return {'knn_top1_accuracy': float(jnp.mean(losses.topk_correct(scores, labels, 1))),
          'knn_top5_accuracy': float(jnp.mean(losses.topk_correct(scores, labels, 5)))}


def evaluate(features_fn, params, state, *, eval_batches: Iterator,
             knn_train_batches: Optional[Iterator], num_classes: int, k: int,
             temperature: float) -> dict[str, float]:
  """Online-classifier metrics on the eval split, plus kNN when a bank split is given."""
  test = extract_features(features_fn, params, state, eval_batches)
  metrics = classifier_metrics(test)
  if knn_train_batches is not None:
    train = extract_features(features_fn, params, state, knn_train_batches)
    metrics.update(knn_metrics(train, test, num_classes=num_classes, k=k,
                               temperature=temperature))
  return metrics
