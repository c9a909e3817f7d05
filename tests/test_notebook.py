"""notebooks/quickstart.ipynb runs top to bottom with tiny parameters, as papermill would run it
(values in a cell after the one tagged `parameters`), and shows figures and the GED."""

import os
import re

import pytest

# nbclient and nbformat are imported in the tests: `make test-compat` collects this file in an
# environment without them (and deselects these tests).

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "notebooks", "quickstart.ipynb")
TINY = """epochs = 2
steps_per_epoch = 2
image_size = 16
num_examples = 16
eval_examples = 8
launch_tensorboard = False
"""


def _code(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_the_notebook_only_imports_the_library_and_has_its_parameters_cell():
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    tagged = [c for c in _code(notebook) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    names = set(re.findall(r"^(\w+) =", tagged[0].source, re.M))
    assert {"epochs", "steps_per_epoch", "image_size", "num_examples"} <= names
    source = "\n".join(c.source for c in _code(notebook))
    assert not re.search(r"^\s*(def|class) ", source, re.M)  # no library logic of its own
    # Installing on Colab must not bring another TensorFlow: the package alone, no extras.
    install = re.findall(r"%pip install (.*)", source)
    assert install and all("tensorflow" not in line and "[" not in line for line in install)


@pytest.mark.slow
def test_the_notebook_runs_with_tiny_parameters(tmp_path):
    import nbclient
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    index = next(i for i, c in enumerate(notebook.cells)
                 if "parameters" in c.metadata.get("tags", []))
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(
        TINY, metadata={"tags": ["injected-parameters"]}))
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    outputs = [output for cell in _code(notebook) for output in cell.outputs]
    assert sum("image/png" in output.get("data", {}) for output in outputs) >= 3
    text = "".join(output.get("text", "") for output in outputs)
    assert re.search(r"GED\(16\) = \d\.\d{3} \(noise floor \d\.\d{3}\)", text), text
    assert os.path.isfile(tmp_path / "latent.png")
    assert os.listdir(tmp_path / "saved_models" / "probunet") == ["1"]
    assert "(4, 100, 16, 16)" in text  # 100 masks per image from the exported `sample`
    # No TensorFlow start-up or C++ log line among the cells' outputs.
    assert not re.search(r"cuda drivers|cuInit|oneDNN custom|absl::InitializeLog|"
                         r"^[IWE]\d{4} \d\d:", text, re.M), text
    # Keras' TensorBoard logs and the sample grids.
    assert {"train", "validation", "samples"} <= set(os.listdir(tmp_path / "logs"))
