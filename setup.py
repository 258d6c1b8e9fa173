"""Installs the SpineNet Keras 3 training codebase (packages official, modeling, dataloaders)."""

import setuptools

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
    extras_require={"test": ["pytest", "pytest-xdist", "importlib_resources",
                             "nbclient", "nbformat", "ipykernel"]},
)
