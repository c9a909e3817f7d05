"""The library, once loaded (its first name used), has imported the export, not the clients
nor the local server: no grpc, no `tfprobunet.serving.local_server` (what `python -X
importtime` lists), while the lazy names of `tfprobunet.serving` still resolve on first use."""

import os
import re
import subprocess
import sys


def _imported_modules(code):
    """The modules `python -X importtime -c code` imports, and its standard output."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=env,
                            capture_output=True, text=True, timeout=300, check=True)
    modules = [m.group(1) for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \| ( *\S+)$",
                                               result.stderr, re.MULTILINE)]
    return [m.strip() for m in modules], result.stdout


def test_import_tfprobunet_imports_neither_grpc_nor_the_local_server():
    # The library loaded (its first function used): the export, but no client or server.
    modules, _ = _imported_modules("import tfprobunet; tfprobunet.train")
    assert "tfprobunet" in modules and "tfprobunet.serving.export" in modules
    assert not [m for m in modules if m == "grpc" or m.startswith(("grpc.", "grpc_"))]
    assert not [m for m in modules if m.startswith("tfprobunet.serving.local_server")]
    assert "tfprobunet.serving.client" not in modules


def test_the_lazy_serving_names_resolve():
    code = ("import tfprobunet\n"
            "from tfprobunet import serving\n"
            "from tfprobunet.serving.local_server import ModelServer\n"
            "print(serving.ModelServer is ModelServer, serving.Servable.__name__,\n"
            "      serving.RequestLimits().max_samples, serving.GrpcClient.__name__,\n"
            "      issubclass(serving.InvalidRequestError, serving.ServingError),\n"
            "      sorted(set(serving.__all__) - set(dir(serving))))")
    modules, out = _imported_modules(code)
    assert out.split() == ["True", "Servable", "1000", "GrpcClient", "True", "[]"]
    assert "grpc" in modules
