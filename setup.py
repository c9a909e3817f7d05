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
    install_requires=[
        "tensorflow>=2.20",
        "keras>=3",
        "tensorflow-probability>=0.25",
        # TFP imports tf_keras at import time; the library never uses it.
        "tf-keras",
        "numpy",
        # evaluation: Hungarian matching (HM-IoU) and the report's figures
        "scipy",
        "matplotlib",
    ],
    extras_require={
        "tune": ["keras-tuner>=1.4", "tensorboard"],
        "serving": ["tensorflow-serving-api", "grpcio"],
        "dev": ["pytest>=8", "pytest-timeout", "pillow"],
    },
    entry_points={"console_scripts": ["tfprobunet=tfprobunet.cli:main"]},
)
