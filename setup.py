"""Installs the SpineNet Keras 3 training codebase (packages official, modeling, dataloaders)."""

import setuptools

_SEARCH = ["google-vizier[jax]==0.1.24", "jax==0.4.38", "jaxlib==0.4.38",
           "flax==0.10.2", "optax==0.2.4", "chex==0.1.88", "matplotlib"]
# Running .tflite files (LiteRT, which replaces tf.lite.Interpreter) and
# writing / running .onnx files: a set that installs and imports beside
# TensorFlow 2.21, protobuf 7 and numpy 2.
_SERVING = ["ai-edge-litert==2.3.0", "tf2onnx==1.17.0", "onnx==1.23.2",
            "onnxruntime==1.32.0"]

setuptools.setup(
    name="spinenet-keras",
    version="0.1.0",
    description=("Scale-permuted backbones (SpineNet, SpineNet-MBConv, "
                 "Eff-SpineNet) and their detectors, classifiers and "
                 "segmenters on TensorFlow 2 / Keras 3."),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=setuptools.find_packages(
        include=["official", "official.*", "modeling", "modeling.*",
                 "dataloaders", "dataloaders.*"]),
    install_requires=[
        "tensorflow>=2.20",
        "keras>=3",
        "gin-config>=0.5",
        "absl-py",
        "pycocotools",
        "tensorflow-datasets",
        "numpy",
        "pillow",
        "scikit-learn",
        "tqdm",
    ],
    extras_require={
        # The architecture searches (python -m official.search) run on OSS
        # Vizier. An unpinned google-vizier[jax] resolves a jax that fails at
        # import; this set installs and imports beside TensorFlow 2.21.
        "search": _SEARCH,
        # official.export --format=onnx, and official.predict /
        # official.export_agreement on .tflite and .onnx files.
        "serving": _SERVING,
        "test": ["pytest", "pytest-xdist", "hypothesis>=6",
                 "importlib_resources", "nbclient", "nbformat",
                 "ipykernel"] + _SEARCH + _SERVING,
    },
)
