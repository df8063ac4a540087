"""``fornet-deploy package``: hand a bundle to a serving stack.

* ``triton``: a Triton Inference Server model repository (:mod:`.triton`);
* ``deepstream``: an ``nvinfer`` config, labels and a ``deepstream-app`` config (:mod:`.deepstream`).

Each target is checked by the code that writes it (Triton's protobuf schema and the ONNX
graph; DeepStream's documented ``nvinfer`` keys), and written all or nothing
(:mod:`.output`).
"""

from __future__ import annotations

from pathlib import Path

from ..bundle import Bundle
from ..contract import PACKAGE_TARGETS, check_choice
from .output import write_package


def package(bundle_dir: str | Path, target: str, out: str | Path, options) -> dict:
    """Write the ``target`` package of a bundle into ``out``; returns its summary.

    ``options`` is a :class:`.triton.TritonOptions` or :class:`.deepstream.DeepStreamOptions`.
    """
    check_choice(target, PACKAGE_TARGETS, "package target")
    options.validate()
    bundle = Bundle.open(bundle_dir, verify=False)  # the files packaged are checked one by one
    if target == "triton":
        from .triton import write_repository as write
    else:
        from .deepstream import write_deepstream as write
    return write_package(out, target, lambda folder: write(bundle, folder, options))
