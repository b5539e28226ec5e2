"""Run a tutorial notebook under a chosen matplotlib backend and see what each cell showed.

Used by ``tests/test_notebooks_inline.py`` (every notebook with ``%matplotlib inline``) and by
``bench/notebooks.py`` (the run-time table, both backends). The notebook's ``%matplotlib
widget`` line is swapped for the backend asked for; before the first cell a probe is set up in
the kernel that records every figure pyplot makes (a new figure manager), and after every cell
the probe says which figures that cell made. What a cell showed is read from its outputs:

* ``inline``: each figure the cell made must appear as exactly one ``image/png`` output, and no
  other PNG may appear (a figure shown twice, or one that vanished, is a defect);
* ``widget`` (ipympl): each figure's canvas widget must appear exactly once among the cell's
  outputs.

Figures that zfwidgets' widgets draw (ipympl canvases made outside pyplot) are widgets, not
pyplot figures: they are not counted.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
MAGIC = "%matplotlib widget"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

_PROBE_SETUP = r"""
def _zf_probe_setup():
    import matplotlib._pylab_helpers as helpers
    made = []
    adopt = helpers.Gcf._set_new_active_manager.__func__

    def counting(cls, manager):
        made.append(manager)
        return adopt(cls, manager)

    helpers.Gcf._set_new_active_manager = classmethod(counting)

    def report():
        import json
        rows = [{"num": m.num, "model_id": getattr(m.canvas, "model_id", None)} for m in made]
        made.clear()
        print("ZF-PROBE" + json.dumps(rows))

    return report

_zf_probe = _zf_probe_setup()
del _zf_probe_setup
"""


@dataclass
class CellRun:
    """What one code cell did."""

    index: int
    seconds: float
    figures: int = 0
    pngs: int = 0
    problems: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class NotebookRun:
    """A notebook's run under one backend."""

    path: Path
    backend: str
    seconds: float
    cells: list[CellRun]
    notebook: object = field(default=None, repr=False)

    @property
    def problems(self) -> list[str]:
        """Every cell's problems and errors, as ``cell N: ...`` lines."""
        out = []
        for c in self.cells:
            if c.error:
                out.append(f"cell {c.index}: {c.error}")
            out += [f"cell {c.index}: {p}" for p in c.problems]
        return out

    @property
    def slowest(self) -> CellRun:
        """The code cell that took longest."""
        return max(self.cells, key=lambda c: c.seconds)


def notebooks() -> list[Path]:
    """Every tutorial notebook (``notebooks/*.ipynb``, not the solutions), in order."""
    return sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))


def _swap_backend(nb, backend: str) -> None:
    for cell in nb.cells:
        if cell.cell_type == "code" and MAGIC in cell.source:
            cell.source = cell.source.replace(MAGIC, f"%matplotlib {backend}")


def _probe(client, nbformat, index: int) -> list[dict]:
    cell = nbformat.v4.new_code_cell("_zf_probe()")
    client.execute_cell(cell, index)
    for out in cell.outputs:
        text = out.get("text", "")
        if out.get("output_type") == "stream" and "ZF-PROBE" in text:
            return json.loads(text.split("ZF-PROBE", 1)[1].strip())
    raise RuntimeError(f"the figure probe gave no answer after cell {index}")


def _check_cell(run: CellRun, outputs, made: list[dict], backend: str) -> None:
    run.figures = len(made)
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    run.pngs = len(pngs)
    if backend == "inline":
        if len(pngs) != len(made):
            run.problems.append(f"made {len(made)} figure(s), showed {len(pngs)} PNG(s)")
        datas = [o["data"]["image/png"] for o in pngs]
        if len(set(datas)) != len(datas):
            run.problems.append("the same picture is shown twice")
        return
    views = [o["data"][WIDGET_VIEW]["model_id"] for o in outputs
             if WIDGET_VIEW in o.get("data", {})]
    for fig in made:
        n = views.count(fig["model_id"])
        if n != 1:
            run.problems.append(f"figure {fig['num']} shown {n} times")


def run_notebook(path: Path, backend: str = "inline", timeout: int = 600, *,
                 keep_going: bool = False) -> NotebookRun:
    """Execute ``path`` with ``%matplotlib <backend>`` in a fresh kernel, cell by cell.

    Parameters
    ----------
    path : Path
        A notebook whose code uses ``%matplotlib widget``.
    backend : {"inline", "widget"}
    timeout : int
        Seconds a cell may take.
    keep_going : bool
        Run the cells after an error too (to see every failing cell at once).

    Returns
    -------
    NotebookRun
        Per cell: time, figures made, PNGs shown, problems; the first error stops the run.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    _swap_backend(nb, backend)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(path.parent)}})
    cells: list[CellRun] = []
    start = time.perf_counter()
    env = dict(os.environ)
    code = list(enumerate(nb.cells))
    scratch = len(nb.cells)
    nb.cells.append(nbformat.v4.new_code_cell(""))     # where the probes run
    with client.setup_kernel(env=env):
        client.execute_cell(nbformat.v4.new_code_cell(_PROBE_SETUP), scratch)
        for index, cell in code:
            if cell.cell_type != "code":
                continue
            t0 = time.perf_counter()
            run = CellRun(index, 0.0)
            cells.append(run)
            try:
                client.execute_cell(cell, index)
            except CellExecutionError as exc:
                run.seconds = time.perf_counter() - t0
                run.error = str(exc).strip().splitlines()[-1][:500]
            run.seconds = time.perf_counter() - t0
            _check_cell(run, cell.outputs, _probe(client, nbformat, scratch), backend)
            if run.error and not keep_going:
                break
    nb.cells.pop()
    return NotebookRun(path, backend, time.perf_counter() - start, cells, nb)
