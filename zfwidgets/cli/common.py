"""What the ``zfwidgets`` commands share: opening a session, failing cleanly, the kernel's setup.

Also the pieces the test suite reuses to serve notebooks: :func:`one_cell_notebook` and
:func:`kernel_env`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import ZFError
from ..models.choice import ENV_MODEL, default_model

__all__ = ["ALLOCATOR_ENV", "DEFAULT_MODEL", "DEFAULT_MODEL_REASON", "ENV_IMAGE", "ENV_MODEL",
           "check_inputs", "fail", "is_sample", "kernel_env", "model_names", "one_cell_notebook",
           "open_session"]


def _default_model() -> tuple[str, str]:
    """The default ``--model`` and why (:func:`zfwidgets.default_model`); a bad
    ``ZFWIDGETS_MODEL`` is kept as given, for :func:`check_inputs` to report."""
    try:
        choice = default_model()
    except ZFError as exc:
        return os.environ.get(ENV_MODEL, "").strip(), str(exc)
    return choice.name, choice.reason


#: The default ``--model``: alexnet when its ImageNet weights are in torch's hub cache, else
#: efficientnet_lite0; ``ZFWIDGETS_MODEL`` overrides. Decided once, when the command starts.
DEFAULT_MODEL, DEFAULT_MODEL_REASON = _default_model()
ENV_IMAGE = "ZFWIDGETS_IMAGE"

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
    """The registry's model names, for help texts."""
    from ..models import list_models

    return ", ".join(list_models())


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

    if args.model not in list_models():
        return fail(f"unknown model {args.model!r}; models are {', '.join(list_models())}")
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


def kernel_env(model: str, image: str | None, environ) -> dict[str, str]:
    """The environment of the explorer's server and kernel: ``environ`` plus the model and image
    to open (a file path made absolute, a sample name kept) and :data:`ALLOCATOR_ENV` where
    ``environ`` does not set those variables itself."""
    env = dict(environ)
    for key, value in ALLOCATOR_ENV.items():  # the kernel's glibc reads them at start
        env.setdefault(key, value)
    env[ENV_MODEL] = model
    image = image or ""
    env[ENV_IMAGE] = str(Path(image).resolve()) if image and not is_sample(image) else image
    return env
