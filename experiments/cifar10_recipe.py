"""CIFAR-10: ResNet-18 (CIFAR stem), batch 512, 1000 epochs, then linear evaluation.

Sized for one modern GPU (roughly a day). The paper has no CIFAR pretraining number;
solo-learn reports about 92-93% linear top-1 for BYOL with this recipe. Validation =
the last 5,000 training images; test = the CIFAR-10 test split.
    python experiments/cifar10_recipe.py --workdir=/tmp/byol_cifar10 --data_dir=~/tensorflow_datasets
"""

from reproduce import run

if __name__ == '__main__':
  run('CIFAR-10 ResNet-18', 'configs/cifar10.py',
      paper='no paper number (solo-learn: ~92-93% linear top-1)',
      hardware='1 GPU, batch 512, 87,890 steps',
      linear_eval_config='configs/linear_eval.py:cifar10')
