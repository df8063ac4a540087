"""A real Triton server serves the generated repository and answers as `fornet-deploy predict`.

The server is the `tritonserver` binary of the nvidia-pytriton wheel (Triton 2.51, CPU, the
Python backend only: no onnxruntime backend), from the environment
scripts/triton_test_env.sh makes. So the generated `fornet_ort_*` model is served by a
stand-in: the generated config.pbtxt with `backend: "python"` instead of the onnxruntime
platform and its GPU accelerator block, everything else as written (name, tensors, data types,
dims, max_batch_size, dynamic batching), and a model.py that runs the generated repository's
own model.onnx with ONNX Runtime. The client is the repository README's snippet, run as written
(only the server address and the image file are filled in).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_cli

from fornet_deploy.data.formats import open_dataset
from fornet_deploy.io import read_image
from fornet_deploy.package import package
from fornet_deploy.package.triton import TritonOptions, read_config

pytestmark = pytest.mark.triton
ROOT = Path(__file__).resolve().parents[2]
ENV = Path(os.environ.get("FORNET_TRITON_ENV", ROOT / ".venv-triton"))
SITE = ENV / "lib" / "python3.11" / "site-packages"
SERVER = SITE / "pytriton" / "tritonserver"
DEBIAN_PYTHON = Path("/usr/bin/python3.11")

STAND_IN = '''\
import json
import os

import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Runs the repository's model.onnx with ONNX Runtime (stand-in for the onnxruntime backend)."""

    def initialize(self, args):
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.outputs = [o["name"] for o in json.loads(args["model_config"])["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            image = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()
            values = self.session.run(self.outputs, {"image": image})
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, v) for n, v in zip(self.outputs, values)]))
        return responses
'''


def skip_reason() -> str | None:
    if not DEBIAN_PYTHON.is_file():
        return f"{DEBIAN_PYTHON} (Debian's Python 3.11, whose libpython the Triton backend stub embeds) is absent"
    if not (SERVER / "bin" / "tritonserver").is_file():
        return f"no Triton server environment at {ENV}: run scripts/triton_test_env.sh (nvidia-pytriton)"
    if not (SITE / "onnxruntime").is_dir():
        return f"{ENV} lacks onnxruntime for the Python-backend stand-in: re-run scripts/triton_test_env.sh"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def python_stand_in(model_dir: Path) -> None:
    """The generated model, served by the Python backend instead of onnxruntime (see above)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb

    config = read_config(model_dir / "config.pbtxt")
    config.ClearField("platform")
    config.ClearField("optimization")  # the TensorRT EP settings are the onnxruntime backend's
    config.backend = "python"
    for group in config.instance_group:
        group.kind = pb.ModelInstanceGroup.KIND_CPU
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config))
    (model_dir / "1" / "model.py").write_text(STAND_IN)


class Server:
    """tritonserver on 127.0.0.1 (HTTP only), stopped by its own process id."""

    def __init__(self, repository: Path, work: Path):
        backends = work / "backends"
        shutil.copytree(SERVER / "backends", backends)
        shutil.copy(SERVER / "python_backend_stubs" / "3.11" / "triton_python_backend_stub", backends / "python")
        self.port = free_port()
        self.log = work / "tritonserver.log"
        env = dict(os.environ, PATH=f"{ENV / 'bin'}:{os.environ['PATH']}",
                   LD_LIBRARY_PATH=str(SITE / "nvidia_pytriton.libs"))
        self.process = subprocess.Popen(
            [str(SERVER / "bin" / "tritonserver"), f"--model-repository={repository}",
             f"--backend-directory={backends}", "--http-address=127.0.0.1", f"--http-port={self.port}",
             "--allow-grpc=false", "--allow-metrics=false", "--disable-auto-complete-config",
             "--exit-timeout-secs=5"],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=env)
        self.url = f"127.0.0.1:{self.port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"tritonserver exited: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise AssertionError(f"tritonserver not ready in 90 s: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def readme_client(repository: Path) -> str:
    text = (repository / "README.md").read_text()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


@pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")
@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_triton_serves_the_repository_with_predicts_labels(kind, tiny_bundle, static_bundle, tiny_data, tmp_path):
    bundle = tiny_bundle if kind == "dynamic" else static_bundle
    repository = tmp_path / "repo"
    package(bundle, "triton", repository, TritonOptions(max_batch=4))  # the repository as users get it
    python_stand_in(repository / "fornet_ort_fp32")
    image = open_dataset(tiny_data).samples("val")[0].image
    predicted = run_cli("predict", str(image), "--bundle", str(bundle), "--out", str(tmp_path / "preds"))
    assert predicted.returncode == 0, predicted.stderr
    expected = read_image(tmp_path / "preds" / f"{image.stem}_trainIds.png")[..., 0]

    server = Server(repository, tmp_path)
    try:
        code = readme_client(repository).replace('"localhost:8000"', repr(server.url)).replace('"frame.png"',
                                                                                           repr(str(image)))
        scope: dict = {}
        exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README we generated
        assert scope["labels"].shape == expected.shape
        assert np.array_equal(scope["labels"], expected)
        assert scope["classes"][:3] == ["road", "sidewalk", "building"]
        import tritonclient.http as httpclient

        if kind == "dynamic":  # the batching config is live: two images in one request
            client = httpclient.InferenceServerClient(server.url)
            pair = np.concatenate([scope["batch"], scope["batch"][:, :, ::-1].copy()])
            request = httpclient.InferInput("image", list(pair.shape), "FP32")
            request.set_data_from_numpy(pair)
            labels = client.infer("fornet_ort_fp32", [request]).as_numpy("labels")
            assert labels.shape == (2, *expected.shape) and np.array_equal(labels[0], expected)
            served = client.get_model_config("fornet_ort_fp32")
            assert served["max_batch_size"] == 4 and served["dynamic_batching"]["preferred_batch_size"] == [2, 4]
        # the files at the repository root (README.md, fornet-package.json) are not taken for models
        import tritonclient.http as httpclient

        index = httpclient.InferenceServerClient(server.url).get_model_repository_index()
        assert [(m["name"], m["state"]) for m in index] == [("fornet_ort_fp32", "READY")]
    finally:
        server.stop()
