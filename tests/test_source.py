"""The loader contract (`tfprobunet.data.source`): every dataset of the catalog has a module with
one `load(data_dir, split, image_size=None, seed=..., split_manifest=None, ...) -> Source`, which
`tfprobunet.data.load` reaches by name; `source.py` sits below every loader, and no module of
`tfprobunet.data` imports one that imports it back."""

import ast
import importlib
import inspect
import os
import pickle

import numpy as np
import pytest

from fixtures import (ROOT, lidc_entries, write_cityscapes, write_image_folders, write_lidc_crops,
                      write_npz_splits, write_volume_cases)
from fixtures import write_phiseg_hdf5 as _write_phiseg_hdf5
from tfprobunet import catalog, data

DATA = os.path.join(ROOT, "tfprobunet", "data")
CONTRACT = ["data_dir", "split", "image_size", "seed", "split_manifest"]


def _module(name):
    return importlib.import_module(f"tfprobunet.data.{catalog.DATASETS[name].module}")


def _shares_module(name):
    return sum(e.module == catalog.DATASETS[name].module for e in catalog.DATASETS.values()) > 1


@pytest.mark.parametrize("name", catalog.DATASET_NAMES)
def test_every_dataset_module_has_a_load_with_the_contracts_signature(name):
    parameters = list(inspect.signature(_module(name).load).parameters.values())
    assert [p.name for p in parameters[:5]] == CONTRACT
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in parameters[:5])
    data_dir, split, image_size, seed, split_manifest = parameters[:5]
    assert data_dir.default is split.default is inspect.Parameter.empty
    assert image_size.default is None and split_manifest.default is None
    assert isinstance(seed.default, int)
    # A module's own options come after, by keyword only.
    assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in parameters[5:]), parameters
    if _shares_module(name):
        assert "name" in [p.name for p in parameters[5:]]  # told which dataset to read


def _write_pickle(root):
    path = os.path.join(root, "data_lidc.pickle")
    with open(path, "wb") as f:
        pickle.dump(lidc_entries(num_series=10), f)
    return path


def _write_phiseg(root):
    path = os.path.join(root, "data_lidc.hdf5")
    _write_phiseg_hdf5(path)
    return path


def _write_crops(root):
    for split in catalog.SPLITS:
        write_lidc_crops(root, split, seed=len(split))
    return root


def _write_folders(root):
    write_image_folders(root, [f"case{i}" for i in range(10)], size=(16, 16))
    return root


def _write_cityscapes(root):
    write_cityscapes(root)
    return root


def _write_volumes(root):
    return write_volume_cases(root, count=10)


def _write_npz(root):
    write_npz_splits(root)
    return root


# Per dataset: a writer of tiny data in a folder, returning its `data_dir` (None: generated),
# the arguments of `load`, and `(image shape, annotations shape)` of an example.
TINY = {
    "flips": (None, dict(image_size=16, num_examples=3), ((16, 16, 3), (32, 16, 16))),
    "graders": (None, dict(image_size=16, num_examples=3), ((16, 16, 1), (4, 16, 16))),
    "lidc": (_write_crops, dict(image_size=16), ((16, 16, 1), (4, 16, 16))),
    "lidc-pickle": (_write_pickle, dict(image_size=8), ((8, 8, 1), (4, 8, 8))),
    "lidc-phiseg": (_write_phiseg, {}, ((16, 16, 1), (4, 16, 16))),
    "cityscapes": (_write_cityscapes, dict(image_size=(8, 8)), ((8, 8, 3), (32, 8, 8))),
    "npz": (_write_npz, {}, ((8, 8, 1), (2, 8, 8))),
    "folder": (_write_folders, {}, ((16, 16, 1), (2, 16, 16))),
    # int16 CT: the volumes dataset's default intensity rule refuses it without a window
    "volumes": (_write_volumes, dict(window=(-1000, 400)), ((16, 16, 1), (2, 16, 16))),
}


def test_every_dataset_of_the_catalog_has_tiny_data_here():
    assert sorted(TINY) == sorted(catalog.DATASET_NAMES)


@pytest.mark.filterwarnings("ignore::tfprobunet.data.lidc.SplitCountWarning")
@pytest.mark.parametrize("name", catalog.DATASET_NAMES)
def test_load_by_name_gives_the_modules_source(name, tmp_path):
    write, arguments, (image_shape, annotations_shape) = TINY[name]
    data_dir = None if write is None else write(str(tmp_path))
    split = "test"
    source = data.load(name, split, data_dir=data_dir, **arguments)
    assert isinstance(source, data.Source)
    data.check_source(source)
    image, annotations = next(source.dataset.as_numpy_iterator())
    assert (image.shape, annotations.shape) == (image_shape, annotations_shape)
    assert image.dtype == np.float32 and annotations.dtype == np.int32
    # The module's own load gives the same first example.
    entry = catalog.DATASETS[name]
    options = {"name": name} if _shares_module(name) else {}
    if not entry.needs_data_dir:
        options["num_examples"] = arguments["num_examples"]
    options.update({k: v for k, v in arguments.items() if k not in ("image_size", "num_examples")})
    direct = _module(name).load(data_dir, split, arguments.get("image_size"), 0, None, **options)
    assert isinstance(direct, data.Source)
    assert direct.num_classes == source.num_classes
    expected_image, expected_annotations = next(direct.dataset.as_numpy_iterator())
    np.testing.assert_array_equal(image, expected_image)
    np.testing.assert_array_equal(annotations, expected_annotations)


def test_npz_and_folder_yield_the_files_values(tmp_path):
    written = write_npz_splits(str(tmp_path / "npz"))
    images, annotations = written["val"]
    got = list(data.load("npz", "val", data_dir=str(tmp_path / "npz"),
                         num_examples=2).dataset.as_numpy_iterator())
    assert len(got) == 2
    np.testing.assert_array_equal(got[1][0], images[1].astype(np.float32) / 255.0)
    np.testing.assert_array_equal(got[1][1], annotations[1])
    root = str(tmp_path / "folder")
    written = write_image_folders(root, ["a", "b"], size=(5, 7))
    image, masks = list(data.folders.load(root, "train", fractions=(1, 0, 0))
                        .dataset.as_numpy_iterator())[1]
    assert image.shape == (16, 16, 1)  # padded to a multiple of 16
    np.testing.assert_array_equal(image[:5, :7, 0], written["b"][0] / np.float32(255.0))
    np.testing.assert_array_equal(masks[:, :5, :7], written["b"][1])
    assert (masks[:, 5:] == catalog.IGNORE_LABEL).all()
    image, _ = list(data.folders.load(root, "train", fractions=(1, 0, 0), multiple=1)
                    .dataset.as_numpy_iterator())[1]
    assert image.shape == (5, 7, 1)  # the options of from_folders reach it


def test_a_manifest_is_refused_by_the_datasets_split_otherwise(tmp_path):
    write_npz_splits(str(tmp_path))
    for name in ("flips", "npz"):
        with pytest.raises(ValueError, match=f"'{name}' is split by .*Received: split_manif"):
            data.load(name, "train", data_dir=str(tmp_path), split_manifest={"splits": {}})
    with pytest.raises(ValueError, match="`split` must be one of"):
        data.load("npz", "training", data_dir=str(tmp_path))


def _imports(path):
    """Every module the file at `path` imports, function-level imports included, with
    `from package import module` resolved to the module when it is a file of `tfprobunet.data`."""
    modules = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}: a relative import (the package imports absolutely)"
            base = node.module
            for alias in node.names:
                child = f"{base}.{alias.name}"
                is_module = base == "tfprobunet.data" and os.path.exists(
                    os.path.join(DATA, f"{alias.name}.py"))
                modules.add(child if is_module else base)
    return modules


def _data_import_graph():
    """`{module: the modules of tfprobunet.data it imports}` over tfprobunet/data/*.py."""
    names = {f[:-3]: os.path.join(DATA, f) for f in os.listdir(DATA) if f.endswith(".py")}
    module = {n: "tfprobunet.data" if n == "__init__" else f"tfprobunet.data.{n}" for n in names}
    inside = set(module.values())
    return {module[n]: _imports(path) & inside - {module[n]} for n, path in names.items()}


def _cycle(graph):
    """A list of modules that import each other in a circle, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for child in sorted(graph.get(node, ())):
            if state.get(child) == "open":
                return stack[stack.index(child):] + [child]
            if child not in state and (found := visit(child)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_module_of_data_imports_one_that_imports_it_back():
    graph = _data_import_graph()
    assert "tfprobunet.data.source" in graph["tfprobunet.data.folders"]  # the graph sees imports
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_source_imports_no_loader_even_indirectly():
    graph = _data_import_graph()
    loaders = {f"tfprobunet.data.{e.module}" for e in catalog.DATASETS.values()}
    loaders |= {"tfprobunet.data", "tfprobunet.data.sources", "tfprobunet.data.pipeline"}
    reached, todo = set(), ["tfprobunet.data.source"]
    while todo:
        for child in graph[todo.pop()] - reached:
            reached.add(child)
            todo.append(child)
    assert not reached & loaders, reached & loaders
