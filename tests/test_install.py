"""What installing the package does to an environment: the tested versions stay in place.

`make test` runs these on the pinned set (requirements.txt), `make test-compat` on the oldest
supported set (requirements-oldest.txt, Colab's), named by `TFPROBUNET_REQUIREMENTS`.
"""

import importlib.metadata
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pins(filename):
    pins = {}
    with open(os.path.join(ROOT, filename)) as f:
        for line in f:
            match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line.strip())
            if match:
                pins[match[1].lower()] = match[2]
    return pins


@pytest.mark.compat
def test_the_environment_holds_the_tested_versions():
    """After `pip install` of the package (with its dependencies in `make test-compat`), every
    pinned version is still the one installed: nothing was upgraded behind the user's back."""
    pins = _pins(os.environ.get("TFPROBUNET_REQUIREMENTS", "requirements.txt"))
    assert "tensorflow" in pins and "keras" in pins
    installed = {name: importlib.metadata.version(name) for name in pins}
    assert installed == pins
    # TFP's tf-keras belongs to the TensorFlow minor (each tf-keras requires its own minor).
    minor = lambda version: version.split(".")[:2]  # noqa: E731
    assert minor(importlib.metadata.version("tf-keras")) == minor(installed["tensorflow"])


def test_missing_tf_keras_is_named_with_the_matching_version(tmp_path):
    # A tf_keras that cannot be found, as in an environment where it was never installed.
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'tf_keras':\n"
        "            raise ModuleNotFoundError(\"No module named 'tf_keras'\", name='tf_keras')\n"
        "sys.meta_path.insert(0, Block())\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "3"}
    # `import tfprobunet` loads nothing; its first public name loads the library.
    result = subprocess.run([sys.executable, "-c", "import tfprobunet; tfprobunet.train"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    tf_minor = ".".join(importlib.metadata.version("tensorflow").split(".")[:2])
    assert f'pip install "tf-keras~={tf_minor}.0"' in result.stderr, result.stderr[-2000:]


@pytest.mark.compat
def test_without_the_serving_extra_the_library_imports_and_serving_names_the_extra(tmp_path):
    """grpcio and tensorflow-serving-api are the `serving` extra: without them the package
    imports, and the clients and the local server say which extra to install."""
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'tensorflow_serving':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n")
    script = ("import tfprobunet\n"
              "from tfprobunet import serving\n"
              "for make in (lambda: serving.GrpcClient('localhost:1', 'm'),\n"
              "             lambda: serving.ModelServer('.')):\n"
              "    try:\n"
              "        make()\n"
              "    except ImportError as e:\n"
              "        print(e)\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("pip install 'tfprobunet[serving]'") == 2, result.stdout


@pytest.mark.compat
def test_the_readme_python_example_runs():
    """The README's "Python" example, as written but for its training length, in this
    environment (Colab's versions under `make test-compat`)."""
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    example = re.search(r"## Python\n\n```python\n(.*?)```", readme, re.S)[1]
    shortened = example.replace("epochs=12, steps_per_epoch=500", "epochs=1, steps_per_epoch=2")
    shortened = shortened.replace("synthetic.flips(2000, 32)", "synthetic.flips(64, 32)")
    assert shortened.count("steps_per_epoch=2") == 1 and "flips(64, 32)" in shortened
    namespace = {}
    exec(compile(shortened, "README.md", "exec"), namespace)  # in this process: no new import
    assert tuple(namespace["masks"].shape) == (4, 16, 32, 32)
    assert namespace["model"].optimizer.iterations.numpy() == 2
