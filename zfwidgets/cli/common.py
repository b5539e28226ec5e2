"""What the ``zfwidgets`` commands share: opening a session, failing cleanly, the kernel's setup.

Also the pieces the test suite reuses to serve notebooks: :func:`one_cell_notebook` and
:func:`kernel_env`.
"""

from __future__ import annotations

import collections
import os
import sys
from pathlib import Path


__all__ = ["ALLOCATOR_ENV", "ENV_IMAGE", "ENV_MODEL", "LazyText", "check_inputs",
           "default_model_choice", "fail", "is_sample", "kernel_env", "model_names",
           "one_cell_notebook", "open_session"]

#: Names the model to open when ``--model`` is not given (see :func:`zfwidgets.default_model`).
ENV_MODEL = "ZFWIDGETS_MODEL"
ENV_IMAGE = "ZFWIDGETS_IMAGE"


def default_model_choice() -> tuple[str, str]:
    """The model a command opens when ``--model`` is not given, and why
    (:func:`zfwidgets.default_model`: alexnet when its ImageNet weights are in torch's hub cache,
    else efficientnet_lite0; ``ZFWIDGETS_MODEL`` overrides). A bad ``ZFWIDGETS_MODEL`` is kept
    as given, for :func:`check_inputs` to report. Imports the models (hence torch): call it when
    a command runs or its help is read, never when the command line is parsed."""
    from ..errors import ZFError
    from ..models.choice import default_model

    try:
        choice = default_model()
    except ZFError as exc:
        return os.environ.get(ENV_MODEL, "").strip(), str(exc)
    return choice.name, choice.reason


def model_help(what: str = "model name") -> LazyText:
    """The ``--model`` help: the registry's names and the default with its reason, made only
    when the help is read."""
    return LazyText(lambda: f"{what} ({model_names()}); default: "
                            f"{default_model_choice()[1]}".replace("%", "%%"))

#: glibc malloc settings for the explorer's kernel (a variable already set is left alone): keep
#: freed memory for reuse instead of returning every large tensor to the system and
#: page-faulting it in again on the next forward pass. Measured on the 2-core development
#: machine: EfficientNet-Lite0 forward passes 1.4-3x faster (batch 1: 31 -> 43 images/s, batch
#: 32: 19 -> 56), at the price of the kernel keeping its peak memory. Other C libraries ignore
#: these variables.
ALLOCATOR_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(1 << 30),
    "MALLOC_TRIM_THRESHOLD_": str(2 ** 31 - 1),
    "MALLOC_TOP_PAD_": str(1 << 28),
}


def fail(message: str, prog: str = "zfwidgets") -> int:
    """Print ``prog: error: message`` to stderr; returns the exit status 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def model_names() -> str:
    """The registry's model names, for help texts (imports the models, hence torch: use it
    inside a :class:`LazyText`)."""
    from ..models import list_models

    return ", ".join(list_models())


class LazyText(collections.UserString):
    """A string made by ``make()`` when it is first read: a help text that names the models
    without importing torch each time the command line is parsed (only ``--help`` reads it)."""

    def __init__(self, make):
        # UserString's methods build their results as ``type(self)(a_string)``
        self._make = make
        self._text = make if isinstance(make, str) else None

    @property
    def data(self) -> str:
        if self._text is None:
            self._text = str(self._make())
        return self._text

    def __mod__(self, args) -> str:    # argparse formats help as ``help % params``: a str
        return self.data % args


def is_sample(image: str | None) -> bool:
    """Whether ``image`` names a sample photo (and is not a file path)."""
    from ..data import sample_images

    return bool(image) and not os.path.exists(image) and image in sample_images()


def open_session(model: str | None, image: str | None = None):
    """A Session for the command line: ``image`` is a file path or a sample photo's name;
    ``model`` ``None`` is the default model."""
    from ..backend.session import Session
    from ..data import load_sample

    if is_sample(image):
        session = Session(model)
        session.set_image(load_sample(image), name=image)
        return session
    return Session(model, image)


def check_inputs(args) -> int | None:
    """Fail early, with the library's own messages, on a bad ``--model`` or ``--image``: the
    exit status, or ``None`` when both are fine."""
    from ..errors import ZFError
    from ..models import list_models

    model = args.model or default_model_choice()[0]
    if model not in list_models():
        return fail(f"unknown model {model!r}; models are {', '.join(list_models())}")
    if args.image and not is_sample(args.image):
        from ..data import load_image

        try:
            load_image(args.image)
        except ZFError as exc:
            return fail(str(exc))
    return None


def one_cell_notebook(path: str | os.PathLike, source: str) -> Path:
    """Write a Python 3 notebook holding one code cell with ``source`` (for Voila)."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    path = Path(path)
    nbformat.write(nb, str(path))
    return path


def kernel_env(model: str | None, image: str | None, environ) -> dict[str, str]:
    """The environment of the explorer's server and kernel: ``environ`` plus the model and image
    to open (a file path made absolute, a sample name kept), and :data:`ALLOCATOR_ENV` and the
    thread settings of :func:`zfwidgets.threads.thread_env` (``OMP_NUM_THREADS`` from the CPUs
    this process may use, ``OMP_WAIT_POLICY=PASSIVE``) where ``environ`` does not set those
    variables itself."""
    from ..threads import thread_env

    env = dict(environ)
    for key, value in ALLOCATOR_ENV.items():  # the kernel's glibc reads them at start
        env.setdefault(key, value)
    env.update(thread_env(env))               # torch / OpenMP read them when torch is imported
    if model:                                 # else the kernel takes the default model
        env[ENV_MODEL] = model
    image = image or ""
    env[ENV_IMAGE] = str(Path(image).resolve()) if image and not is_sample(image) else image
    return env
