"""``fornet-deploy package``: hand a bundle to a serving stack.

* ``triton``: a Triton Inference Server model repository (:mod:`.triton`);
* ``deepstream``: an ``nvinfer`` config, labels and a ``deepstream-app`` config (:mod:`.deepstream`).

Each target is checked by the code that writes it (Triton's protobuf schema and the ONNX
graph; DeepStream's documented ``nvinfer`` keys), and written all or nothing, over nothing
but an earlier package's own files (:mod:`.output`). The output folder never is, holds or
lies inside the bundle or the dataset it reads (:func:`fornet_deploy.targets.output_folder`).
"""

from __future__ import annotations

from pathlib import Path

from ..bundle import Bundle
from ..contract import PACKAGE_TARGETS, check_choice
from ..targets import output_folder
from .output import write_package


def package(bundle_dir: str | Path, target: str, out: str | Path, options) -> dict:
    """Write the ``target`` package of a bundle into ``out``; returns its summary.

    ``options`` is a :class:`.triton.TritonOptions` or :class:`.deepstream.DeepStreamOptions`.
    """
    check_choice(target, PACKAGE_TARGETS, "package target")
    options.validate()
    output_folder(out, "--out", reads=(bundle_dir, getattr(options, "data", None)))
    bundle = Bundle.open(bundle_dir, verify=False)  # the files packaged are checked one by one
    if target == "triton":
        from .triton import write_repository as write
    else:
        from .deepstream import write_deepstream as write
    return write_package(out, target, lambda folder: write(bundle, folder, options))
