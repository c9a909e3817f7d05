from setuptools import find_packages, setup

setup(
    name="tfprobunet",
    version="0.1.0",
    description="The Probabilistic U-Net (Kohl et al., NeurIPS 2018) for TensorFlow 2 / Keras 3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["tfprobunet", "tfprobunet.*"]),
    # The command line's TensorFlow-free copy of the library's signatures (cli/flags.py).
    package_data={"tfprobunet.cli": ["signatures.json"]},
    install_requires=[
        # The lowest versions are Colab's; requirements-oldest.txt holds them and
        # `make test-compat` tests them.
        "tensorflow>=2.20",
        "keras>=3.10",
        "tensorflow-probability>=0.25",
        # Not listed: tf-keras, which TFP imports (the library never uses it). Every tf-keras
        # release requires the TensorFlow of its own minor, so pip, resolving any tf-keras
        # requirement in an environment that has TensorFlow 2.20 but no tf-keras, picks the
        # newest tf-keras and replaces TensorFlow with the newest one (a range on both does not
        # stop it). `import tfprobunet` names the tf-keras that matches the installed TF.
        "numpy",
        # evaluation: Hungarian matching (HM-IoU) and the report's figures
        "scipy",
        "matplotlib",
        # image files: `predict`, `from_folders` (matplotlib requires it too)
        "pillow",
    ],
    extras_require={
        # scikit-learn: the bayesian tuner's Gaussian process
        "tune": ["keras-tuner>=1.4.7", "tensorboard", "scikit-learn"],
        "serving": ["tensorflow-serving-api", "grpcio"],
        # h5py: PHiSeg's LIDC hdf5 (`lidc-phiseg`); Keras installs it too
        "data": ["h5py"],
        # NIfTI and DICOM volumes (`from_volumes`, `--dataset volumes`, `predict` of a volume)
        "medical": ["nibabel>=5.3", "pydicom>=3"],
        "dev": ["pytest>=8", "pytest-timeout", "pytest-xdist", "pillow"],
    },
    entry_points={"console_scripts": ["tfprobunet=tfprobunet.cli:main"]},
)
