import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax import networks


def _shapes(encoder, stem='imagenet', width=1.0, num_classes=10, **kwargs):
  config = networks.model_config(encoder=encoder, stem=stem, width_multiplier=width, **kwargs)
  net = networks.make_byol_network(config, num_classes=num_classes)
  params, state = jax.eval_shape(
      lambda: networks.init_network(net, jax.random.PRNGKey(0), image_size=32))
  flat = lambda tree: {f'{m}/{n}': v.shape for m, n, v in hk.data_structures.traverse(tree)}
  return flat(params), flat(state)


def test_resnet18_parameter_tree_matches_official_names_and_shapes():
  params, state = _shapes('resnet18')
  expected = {  # ../shared/spec/OFFICIAL_PARAMS.md, ResNet-18, 10 classes
      'res_net18/~/initial_conv/w': (7, 7, 3, 64),
      'res_net18/~/initial_batchnorm/scale': (1, 1, 1, 64),
      'res_net18/~/block_group_0/~/block_0/~/conv_0/w': (3, 3, 64, 64),
      'res_net18/~/block_group_0/~/block_0/~/batchnorm_1/offset': (1, 1, 1, 64),
      'res_net18/~/block_group_0/~/block_0/~/shortcut_conv/w': (1, 1, 64, 64),
      'res_net18/~/block_group_0/~/block_0/~/shortcut_batchnorm/scale': (1, 1, 1, 64),
      'res_net18/~/block_group_3/~/block_1/~/conv_1/w': (3, 3, 512, 512),
      'projector/linear/w': (512, 4096), 'projector/linear/b': (4096,),
      'projector/batch_norm/scale': (1, 4096), 'projector/linear_1/w': (4096, 256),
      'predictor/linear/w': (256, 4096), 'predictor/linear_1/w': (4096, 256),
      'classifier/w': (512, 10), 'classifier/b': (10,),
  }
  for name, shape in expected.items():
    assert params.get(name) == shape, name
  assert 'projector/linear_1/b' not in params  # second MLP layer has no bias
  assert not any(n.endswith('conv_2/w') for n in params)  # basic blocks
  assert 'res_net18/~/block_group_0/~/block_1/~/shortcut_conv/w' not in params
  # 4 groups x 2 blocks x 2 convs + 4 shortcuts + stem = 21 convs.
  assert sum(n.endswith('/w') and 'res_net18' in n for n in params) == 21
  for ema in ('mean_ema', 'var_ema'):
    for leaf in ('average', 'hidden', 'counter'):
      assert f'res_net18/~/initial_batchnorm/~/{ema}/{leaf}' in state


def test_group0_projection_flag_gives_the_standard_resnet18():
  params, _ = _shapes('resnet18', group0_projection=False)
  assert 'res_net18/~/block_group_0/~/block_0/~/shortcut_conv/w' not in params
  assert 'res_net18/~/block_group_1/~/block_0/~/shortcut_conv/w' in params


def test_resnet50_bottleneck_and_representation_sizes():
  params, _ = _shapes('resnet50', width=0.25, projector_hidden_size=64,
                      predictor_hidden_size=64)
  assert params['res_net50/~/block_group_0/~/block_0/~/conv_0/w'] == (1, 1, 16, 16)
  assert params['res_net50/~/block_group_0/~/block_0/~/conv_2/w'] == (1, 1, 16, 64)
  assert params['res_net50/~/block_group_1/~/block_0/~/conv_1/w'] == (3, 3, 32, 32)
  assert params['projector/linear/w'] == (512, 64)
  assert networks.representation_size('resnet50', 2) == 4096
  assert networks.representation_size('resnet18', 0.5) == 256
  assert networks.representation_size('resnet200', 2) == 4096


def test_zero_init_last_bn_flag():
  for zero_init in (False, True):
    config = networks.model_config(encoder='tiny', width_multiplier=0.5,
                                   zero_init_last_bn=zero_init, projector_hidden_size=8,
                                   predictor_hidden_size=8, projection_size=8)
    net = networks.make_byol_network(config, num_classes=3)
    params, _ = networks.init_network(net, jax.random.PRNGKey(0), image_size=8)
    last = [v['scale'] for m, v in params.items() if m.endswith('batchnorm_1')]
    others = [v['scale'] for m, v in params.items()
              if 'norm' in m and not m.endswith('batchnorm_1')]
    assert len(last) == 4  # the last BN of each of the tiny net's 4 basic blocks
    assert all(np.all(s == (0. if zero_init else 1.)) for s in last)
    assert all(np.all(s == 1.) for s in others)
  # Bottleneck blocks: the last BN is batchnorm_2, one per block (16 in ResNet-50).
  params, _ = _shapes('resnet50', width=0.25, projector_hidden_size=8,
                      predictor_hidden_size=8)
  assert sum(n.endswith('batchnorm_2/scale') for n in params) == 16


def _tiny(precision='float32', stem='cifar'):
  config = networks.model_config(encoder='tiny', stem=stem, width_multiplier=0.5,
                                 projector_hidden_size=32, predictor_hidden_size=32,
                                 projection_size=16, precision=precision)
  net = networks.make_byol_network(config, num_classes=10)
  params, state = networks.init_network(net, jax.random.PRNGKey(1), image_size=16)
  return config, net, params, state


def test_forward_outputs_and_input_normalisation():
  _, net, params, state = _tiny()
  images = np.random.RandomState(0).randint(0, 256, (4, 16, 16, 3)).astype(np.uint8)
  apply = jax.jit(net.apply, static_argnums=(3,), static_argnames=('target',))
  out, _ = apply(params, state, images, False)
  assert {k: v.shape for k, v in out.items()} == {
      'embedding': (4, 4), 'projection': (4, 16), 'prediction': (4, 16), 'logits': (4, 10)}
  out_float, _ = apply(params, state, images.astype(np.float32) / 255., False)
  np.testing.assert_allclose(out['embedding'], out_float['embedding'], rtol=1e-5, atol=1e-6)
  target_out, _ = apply(params, state, images, False, target=True)
  assert set(target_out) == {'embedding', 'projection'}
  np.testing.assert_allclose(target_out['projection'], out['projection'], rtol=1e-6)


def test_classifier_sends_no_gradient_into_the_encoder():
  _, net, params, state = _tiny()
  images = np.random.RandomState(0).randint(0, 256, (4, 16, 16, 3)).astype(np.uint8)

  def classifier_loss(p):
    out, _ = jax.vmap(lambda x: net.apply(p, state, x, True), axis_name='i')(images[None])
    return jnp.sum(out['logits'])

  grads = jax.jit(jax.grad(classifier_loss))(params)
  for module, leaves in grads.items():
    norm = sum(float(jnp.sum(jnp.abs(g))) for g in leaves.values())
    assert (norm > 0) == (module == 'classifier'), module


def test_bfloat16_keeps_float32_params_and_is_close_to_float32():
  _, net32, params, state = _tiny('float32')
  _, net16, params16, _ = _tiny('bfloat16')
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(params16))
  images = np.random.RandomState(0).randint(0, 256, (8, 16, 16, 3)).astype(np.uint8)
  run = lambda net: jax.jit(jax.vmap(lambda x: net.apply(params, state, x, True),
                             axis_name='i'))(images[None])
  (out32, state32), (out16, state16) = run(net32), run(net16)
  for key in ('embedding', 'projection', 'prediction'):
    assert out16[key].dtype == jnp.float32
    scale = float(jnp.abs(out32[key]).mean())
    assert float(jnp.abs(out16[key] - out32[key]).mean()) < 0.05 * scale, key
    assert float(jnp.abs(out16[key] - out32[key]).max()) > 0  # really ran in bf16
  assert all(v.dtype in (jnp.float32, jnp.int32) for v in jax.tree.leaves(state16))


def test_cifar_and_imagenet_stems():
  params, _ = _shapes('resnet18', stem='cifar', width=0.25)
  assert params['res_net18/~/initial_conv/w'] == (3, 3, 3, 16)
  params, _ = _shapes('resnet18', stem='imagenet', width=0.25)
  assert params['res_net18/~/initial_conv/w'] == (7, 7, 3, 16)


def test_bad_model_configs_name_the_value():
  with pytest.raises(ValueError, match="stem='tiny'.*imagenet"):
    networks.make_byol_network(networks.model_config(stem='tiny'), num_classes=2)
  with pytest.raises(ValueError, match="resnet19.*resnet18"):
    networks.make_byol_network(networks.model_config(encoder='resnet19'), num_classes=2)
  with pytest.raises(ValueError, match='width_multiplier=0'):
    networks.make_byol_network(networks.model_config(width_multiplier=0), num_classes=2)
  with pytest.raises(ValueError, match='precision'):
    networks.make_byol_network(networks.model_config(precision='float16'), num_classes=2)
