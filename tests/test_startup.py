"""Start-up stays light: what ``import zfwidgets``, the ``zfwidgets`` command line and the
explorer's first view import (each checked in a fresh interpreter), and the pieces that keep
them light give what the heavy path gives."""

from __future__ import annotations

import subprocess
import sys

import pytest


def fresh(code: str) -> str:
    """Run ``code`` in a fresh interpreter (this environment); its stdout."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_import_zfwidgets_imports_no_torch_and_names_resolve_on_use():
    out = fresh("import sys, zfwidgets as zf\n"
                "print('torch' in sys.modules, 'matplotlib' in sys.modules)\n"
                "from zfwidgets import Session, ZFError\n"
                "print('torch' in sys.modules, Session.__module__, ZFError.__module__)\n"
                "print(set(zf.__all__) <= set(dir(zf)), zf.backend.__name__)\n")
    assert out.split() == ["False", "False", "True", "zfwidgets.backend.session",
                           "zfwidgets.errors", "True", "zfwidgets.backend"]
    import zfwidgets

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        zfwidgets.nope


def test_the_command_line_parses_without_torch_and_its_help_names_the_models():
    out = fresh("import sys\nfrom zfwidgets.cli import build_parser\n"
                "args = build_parser().parse_args(['explore', '--no-browser', '--port', '1'])\n"
                "print(args.command, args.model, 'torch' in sys.modules)\n")
    assert out.split() == ["explore", "None", "False"]  # the default model: decided at run time
    from zfwidgets.models import list_models

    helps = subprocess.run([sys.executable, "-m", "zfwidgets.cli", "explore", "--help"],
                           capture_output=True, text=True, timeout=300)
    assert helps.returncode == 0, helps.stderr
    text = " ".join(helps.stdout.split())
    assert f"model name ({', '.join(list_models())}); default: efficientnet_lite0" in text


def test_the_explorer_on_lite0_imports_neither_torchvision_nor_sympy():
    """torchvision is not needed for the offline model; sympy (0.5 s) is what torch imports on
    the first backward pass given a tensor of output gradients: projections avoid that path,
    on a crop (the explorer's first view) and on the whole image (a top-layer unit)."""
    out = fresh("import sys\nfrom zfwidgets.cli import open_session\n"
                "from zfwidgets.widgets import Explorer\n"
                "ex = Explorer(open_session('efficientnet_lite0', None))\n"
                "top = ex.session.layer_table()[-1].name\n"
                "assert ex.session.project(top, 3, None, rule='guided').abs().max() > 0\n"
                "print(ex.session.predict(1)[0][0], 'torchvision' in sys.modules, "
                "'sympy' in sys.modules)\n")
    label, vision, sympy = out.strip().rsplit(" ", 2)
    assert "cat" in label and vision == "False" and sympy == "False"


def test_the_explorer_serves_voila_without_its_slow_optional_iri_parser(tmp_path):
    """``zfwidgets explore`` starts Voila through ``zfwidgets.cli.voila_server``, where
    jsonschema does without ``rfc3987_syntax`` (1.45 s of Voila's import here) and keeps every
    other format check; the server is Voila with the same arguments."""
    from zfwidgets.cli.explore import voila_command

    cmd = voila_command(tmp_path / "x.ipynb", tmp_path, 1)
    assert cmd[1:3] == ["-m", "zfwidgets.cli.voila_server"] and "--port=1" in cmd
    out = fresh("import sys\nfrom zfwidgets.cli.voila_server import prepare\nprepare()\n"
                "import voila.app, jsonschema\nchecks = jsonschema.FormatChecker.checkers\n"
                "print(sys.modules.get('rfc3987_syntax') is None, 'iri' in checks, "
                "'uri' in checks, 'email' in checks)\n")
    assert out.split() == ["True", "False", "True", "True"]
    version = subprocess.run([sys.executable, "-m", "zfwidgets.cli.voila_server", "--version"],
                             capture_output=True, text=True, timeout=300)
    import voila

    assert version.returncode == 0 and version.stdout.strip() == voila.__version__


def test_imagenet_labels_read_without_torchvision_equal_its_own(monkeypatch):
    import importlib.util

    import torchvision

    from zfwidgets.models import weights

    theirs = list(torchvision.models.AlexNet_Weights.IMAGENET1K_V1.meta["categories"])
    assert weights.imagenet_labels() == theirs and len(theirs) == 1000
    labels = weights.imagenet_labels()
    labels[0] = "changed"
    assert weights.imagenet_labels()[0] == theirs[0]            # a fresh list each time
    # where the data file cannot be found, torchvision's own import gives the same names
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert list(weights._imagenet_categories.__wrapped__()) == theirs


def test_lazy_help_text_is_made_once_when_read():
    from zfwidgets.cli.common import LazyText

    calls = []
    text = LazyText(lambda: calls.append(1) or "model name (a, b)")
    assert calls == []
    assert "(a, b)" in text and text.strip() == "model name (a, b)"
    assert text % {} == "model name (a, b)" and str(text) == "model name (a, b)"
    assert calls == [1]
