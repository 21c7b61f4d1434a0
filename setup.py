"""byol-jax: a faithful JAX/Haiku reimplementation of BYOL (arXiv 2006.07733)."""

import setuptools

setuptools.setup(
    name='byol-jax',
    version='0.1.0',
    description='Bootstrap Your Own Latent (BYOL) in JAX/Haiku, faithful to the paper.',
    long_description=open('README.md').read() if __import__('os').path.exists('README.md') else '',
    long_description_content_type='text/markdown',
    packages=setuptools.find_packages(include=['byol_jax', 'byol_jax.*']),
    python_requires='>=3.10',
    install_requires=[
        'absl-py>=2.0',
        'chex>=0.1.86',
        'dm-haiku>=0.0.13',
        'jax>=0.4.30',
        'jaxlib>=0.4.30',
        'ml-collections>=0.1.1',
        'numpy>=1.26',
        'optax>=0.2.3',
        'orbax-checkpoint>=0.6',
        'tensorboardX>=2.6',
        'tensorflow-cpu>=2.16',
        'tensorflow-datasets>=4.9.6',
        'tqdm>=4.66',
        'safetensors>=0.4',
        'pillow>=10.0',
        'importlib_resources>=5.0',  # imported by TFDS's dataset writer
    ],
    extras_require={
        'test': ['pytest>=8.0'],
        'torch': ['torch', 'torchvision'],
    },
    entry_points={
        'console_scripts': [
            'byol-jax-train=byol_jax.train:run',
            'byol-jax-linear-eval=byol_jax.linear_eval:run',
            'byol-jax-finetune=byol_jax.finetune:run',
            'byol-jax-knn-eval=byol_jax.knn_eval:run',
            'byol-jax-export=byol_jax.export:run',
            'byol-jax-prepare-folder=byol_jax.prepare_folder:run',
        ],
    },
)
