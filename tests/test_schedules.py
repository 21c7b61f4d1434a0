import numpy as np
import pytest

from byol_jax import schedules

IMAGENET_TRAIN = 1_281_167


def test_imagenet_1000_epoch_preset_steps():
  assert schedules.steps_from_epochs(1000, IMAGENET_TRAIN, 4096) == 312_784
  assert schedules.steps_from_epochs(10, IMAGENET_TRAIN, 4096) == 3_127
  assert schedules.steps_from_epochs(300, IMAGENET_TRAIN, 4096) == 93_835


@pytest.mark.parametrize('step,expected', [
    (0, 0.),
    (1, 3.2 / 3127),
    (3126, 3.2 * 3126 / 3127),
    (3127, 3.2),
    ((3127 + 312_784) // 2, 3.2 * 0.5 * (1 + np.cos(np.pi * ((312_784 - 3127) // 2) / (312_784 - 3127)))),
    (312_784, 0.),
    (400_000, 0.),
])
def test_learning_rate_1000_epoch_preset(step, expected):
  lr = schedules.learning_rate(step, base_lr=0.2, batch_size=4096, total_steps=312_784,
                               warmup_steps=3127)
  np.testing.assert_allclose(lr, expected, rtol=1e-5, atol=1e-6)


def test_learning_rate_is_monotone_in_each_phase():
  steps = np.arange(0, 1000)
  lr = np.array(schedules.learning_rate(steps, base_lr=0.3, batch_size=512,
                                        total_steps=1000, warmup_steps=100))
  assert np.all(np.diff(lr[:101]) > 0) and np.all(np.diff(lr[100:]) <= 0)
  np.testing.assert_allclose(lr.max(), 0.3 * 512 / 256, rtol=1e-6)


@pytest.mark.parametrize('step,expected', [
    (0, 0.996), (312_784 // 2, 0.998), (312_784, 1.), (10 ** 6, 1.),
    (312_784 // 4, 1 - 0.004 * (np.cos(np.pi / 4) + 1) / 2),
])
def test_target_ema_1000_epoch_preset(step, expected):
  tau = schedules.target_ema(step, base_ema=0.996, total_steps=312_784)
  np.testing.assert_allclose(tau, expected, rtol=0, atol=2e-7)
