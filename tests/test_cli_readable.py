"""Output a person can read at 100 columns (issue 25, item 4): every --help, `bench --matrix`,
`lint` (summarised on a big graph; a CPU graph is not linted for TensorRT; a bundle folder
lints its TensorRT-bound graphs), `parity` and `inspect`, each rendered at COLUMNS=100 with
nothing cut; flags shown as flags, and a value given to one refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
from cli_helpers import assert_one_line_error, run_cli
from onnx import TensorProto, helper
from typer.main import get_command

from fornet_deploy.cli import app
from fornet_deploy.errors import ExitCode

COMMANDS = sorted(get_command(app).commands)


@pytest.fixture(autouse=True)
def hundred_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")


def readable(text: str) -> None:
    assert "…" not in text, text
    assert all(len(line) <= 100 for line in text.splitlines()), max(text.splitlines(), key=len)


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_help_reads_at_100_columns(command):
    result = run_cli(*([command] if command else []), "--help")
    assert result.returncode == 0, result.stderr
    readable(result.stdout)
    assert "<bool>" not in result.stdout  # flags read as flags
    if command:
        for param in get_command(app).commands[command].params:
            if not param.hidden:
                for opt in param.opts:
                    if opt.startswith("--"):
                        assert f"  {opt}" in result.stdout, f"{command} {opt}"


@pytest.mark.parametrize("value", ["true", "0"])
def test_a_value_after_a_flag_is_a_usage_error_not_an_input(tiny_bundle, tmp_path, value):
    result = run_cli("predict", "--mask", value, "image.png", "--bundle", str(tiny_bundle), "--out", str(tmp_path))
    assert result.returncode == ExitCode.USAGE
    assert_one_line_error(result, "--mask is a flag and takes no value: write --mask alone")
    assert list(tmp_path.iterdir()) == []


def test_bench_matrix_reads_at_100_columns(tiny_bundle, tiny_data):
    result = run_cli("bench", "--bundle", str(tiny_bundle), "--matrix", "--iterations", "1", "--warmup", "0",
                     "--threads", "1", "--data", str(tiny_data), "--num-images", "1")
    assert result.returncode == 0, result.stderr
    readable(result.stdout)
    rows = [line for line in result.stdout.splitlines() if line.startswith("│ ") and not line.startswith("│  ")]
    names = [row.split("│")[1].strip() for row in rows]
    # whole, told apart: ONNX Runtime's rows, then OpenVINO's on the same graphs (fp32, and bf16 where
    # the CPU has it)
    assert names[:3] == ["checkpoint.safetensors", "model.cpu.onnx", "model.onnx"]
    assert names[3:5] == ["model.cpu.onnx", "model.onnx"] and set(names[5:]) <= {"model.cpu.onnx", "model.onnx"}
    assert "GPU exec" not in result.stdout  # no column that is empty on a CPU


def test_parity_and_inspect_read_at_100_columns(tiny_bundle, tmp_path):
    parity = run_cli("parity", "--bundle", str(tiny_bundle), "--num-images", "1", "--out", str(tmp_path / "p"))
    assert parity.returncode == 0, parity.stderr
    readable(parity.stdout)
    assert "│ model.cpu.onnx │" in parity.stdout and "│ model.onnx     │" in parity.stdout
    inspect = run_cli("inspect", str(tiny_bundle))
    assert inspect.returncode == 0, inspect.stderr
    readable(inspect.stdout)


def big_graph(path: Path, warnings: int = 30, blockers: int = 3) -> Path:
    """A graph with ``warnings`` data-dependent NonZero nodes and ``blockers`` Hardmax nodes."""
    nodes = [helper.make_node("NonZero", ["x"], [f"nz{i}"], name=f"/backbone/stage{i}/a_rather_long_node_name/NonZero")
             for i in range(warnings)]
    nodes += [helper.make_node("Hardmax", ["x"], [f"hm{i}"], name=f"/head/Hardmax_{i}") for i in range(blockers)]
    outputs = [helper.make_tensor_value_info(n.output[0], TensorProto.INT64, [2, None]) for n in nodes[:warnings]]
    outputs += [helper.make_tensor_value_info(n.output[0], TensorProto.FLOAT, [1, 4]) for n in nodes[warnings:]]
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])], outputs)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_lint_summarises_a_big_graph_and_lists_everything_with_all(tmp_path):
    model = big_graph(tmp_path / "big.onnx")
    summary = run_cli("lint", str(model), "--json", str(tmp_path / "lint.json"))
    assert summary.returncode == ExitCode.CHECK_FAILED
    readable(summary.stdout)
    report = json.loads((tmp_path / "lint.json").read_text())
    assert report["counts"] == {"data-dependent": 30, "unsupported-op": 3} and len(report["findings"]) == 33
    assert "23 more findings: --all lists them" in summary.stdout
    assert summary.stdout.count("Hardmax is not supported") == 3  # blockers come first
    assert len(summary.stdout.splitlines()) < 60
    everything = run_cli("lint", str(model), "--all")
    readable(everything.stdout)
    assert everything.stdout.count("/NonZero") >= 30 and "more findings" not in everything.stdout
    assert everything.stdout.strip().splitlines()[-1] == "big.onnx: FAIL: 3 blockers, 30 warnings"


def test_lint_of_a_cpu_graph_says_it_is_not_for_tensorrt(tiny_bundle):
    result = run_cli("lint", str(tiny_bundle / "model.cpu.onnx"))
    assert result.returncode == 0, result.stdout
    readable(result.stdout)
    text = " ".join(result.stdout.split())
    assert text.startswith("NOT LINTED: model.cpu.onnx is a CPU graph") and "not meant for TensorRT" in text
    assert "FAIL" not in text and "re-export" not in text


def test_lint_of_a_bundle_folder_lints_its_tensorrt_bound_graphs(tiny_bundle, tmp_path):
    from fornet_deploy.export.fp16 import convert_fp16

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle, ignore=shutil.ignore_patterns("parity"))
    convert_fp16(bundle)
    result = run_cli("lint", str(bundle), "--json", str(tmp_path / "lint.json"))
    assert result.returncode == 0, result.stdout + result.stderr
    readable(result.stdout)
    report = json.loads((tmp_path / "lint.json").read_text())
    assert list(report["graphs"]) == ["model.onnx", "model.fp16.onnx"] and report["passed"] is True
    assert "model.cpu.onnx" not in result.stdout
