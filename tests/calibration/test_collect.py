"""One-pass range collection: the tensors it measures, and the same ranges as ONNX Runtime's
own calibrator (the real one, on the real FoR-Net graph)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from fornet_deploy.calibration import collect
from fornet_deploy.calibration.calibset import CalibrationSet
from fornet_deploy.calibration.collect import (
    MIN_CPU_THREADS,
    CollectConfig,
    augmented_model,
    chunk_size,
    collect_ranges,
    onnxruntime_ranges,
    quantizer_tensors,
)
from fornet_deploy.calibration.placement import range_tensors
from fornet_deploy.calibration.qdq import QUANTIZED_OPS, excluded_nodes, needed_tensors
from fornet_deploy.contract import ONNX_FP32
from fornet_deploy.data.transforms import Preprocessing
from fornet_deploy.errors import FornetError, OptionError


@pytest.fixture(scope="module")
def calibration_set(tiny_data) -> CalibrationSet:
    return CalibrationSet.select(tiny_data, Preprocessing(), (128, 256), num=6)


@pytest.fixture(scope="module")
def images(calibration_set) -> np.ndarray:
    return np.stack(list(calibration_set))


@pytest.fixture
def two_image_chunks(monkeypatch):
    """Chunks of 2 of the 128x256 images, so histograms grow across chunks as at full size."""
    monkeypatch.setattr(collect, "CHUNK_PIXELS", 2 * 128 * 256)


def test_chunks_divide_the_set_within_the_pixel_budget():
    assert chunk_size(64, 256, 512) == 8 and chunk_size(32, 512, 1024) == 2 and chunk_size(128, 1024, 2048) == 1
    assert chunk_size(30, 512, 1024) == 2 and chunk_size(7, 256, 512) == 7 and chunk_size(9, 256, 512) == 3


def test_the_quantizers_tensors_skip_the_fp32_scopes(fornet_bundle):
    proto = onnx.load(str(fornet_bundle / ONNX_FP32))
    measured, aliases = quantizer_tensors(proto, QUANTIZED_OPS, excluded_nodes(proto))
    assert not any("/focus/topk/" in t or "/focus/selector/" in t for t in measured)
    assert 50 <= len(measured) <= 80 and len(aliases) >= 30  # research: 65 measured + 35 Relu inputs, not 236
    for source, target in aliases.items():
        assert target in measured and source not in measured
    both, both_aliases = needed_tensors(proto)
    assert set(range_tensors(proto)) <= set(both) and set(measured) <= set(both)
    assert not set(both_aliases) & set(both)


def test_augmented_model_outputs_the_asked_tensors(fornet_bundle):
    proto = onnx.load(str(fornet_bundle / ONNX_FP32))
    names = range_tensors(proto)[:3]
    model = augmented_model(proto, names)
    assert [o.name for o in model.graph.output] == [o.name for o in proto.graph.output] + names
    with pytest.raises(ValueError, match="not in the graph"):
        augmented_model(proto, ["no/such/tensor"])


@pytest.mark.parametrize("method", ["entropy", "minmax", "percentile"])
def test_ranges_are_onnxruntimes_bit_for_bit(fornet_bundle, images, tmp_path, two_image_chunks, method):
    proto = onnx.load(str(fornet_bundle / ONNX_FP32))
    measured, _ = needed_tensors(proto)
    calls = []
    ours, stats = collect_ranges(proto, images, measured, CollectConfig(method=method, percentile=99.99), tmp_path,
                                 progress=lambda done, total: calls.append((done, total)))
    reference = onnxruntime_ranges(fornet_bundle / ONNX_FP32, images, QUANTIZED_OPS, measured, method, 99.99)
    assert ours == reference
    assert calls == [(2, 6), (4, 6), (6, 6)] and stats.chunk_images == 2 and stats.images == 6
    assert stats.device == "cpu" and stats.threads >= MIN_CPU_THREADS and stats.tensors == len(measured)
    if method != "minmax":
        assert stats.max_bins >= (2048 if method == "percentile" else 128) and not stats.coarsened


def test_a_stream_gives_the_ranges_of_the_array(fornet_bundle, calibration_set, images, tmp_path, two_image_chunks):
    """``calibrate`` streams its images (decoded on the way, never all in memory): the same
    ranges as from the images in one array; a stream that ends early is one line."""
    proto = onnx.load(str(fornet_bundle / ONNX_FP32))
    measured, _ = needed_tensors(proto)
    config = CollectConfig(method="entropy")
    from_array = collect_ranges(proto, images, measured, config, tmp_path)[0]
    assert collect_ranges(proto, calibration_set, measured, config, tmp_path)[0] == from_array
    assert onnxruntime_ranges(fornet_bundle / ONNX_FP32, calibration_set, QUANTIZED_OPS, measured[:4], "minmax") == \
        onnxruntime_ranges(fornet_bundle / ONNX_FP32, images, QUANTIZED_OPS, measured[:4], "minmax")

    class Short:  # announces six images, yields four
        shape = images.shape

        def __iter__(self):
            return iter(images[:4])

    with pytest.raises(FornetError, match="ended before the 6 announced"):
        collect_ranges(proto, Short(), measured, config, tmp_path)


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> tuple[onnx.ModelProto, np.ndarray]:
    """The real FoR-Net graph and two SynthCity images at 256x512: at 128x256 one and two
    threads happen to agree on every range, so the difference below needs the larger size."""
    from fornet_deploy.contract import SHIPPED_WEIGHTS
    from fornet_deploy.data.synthcity import SynthCityConfig, generate
    from fornet_deploy.export.onnx import ExportConfig, export_bundle

    root = tmp_path_factory.mktemp("wide")
    generate(root / "data", SynthCityConfig(train=2, val=1, height=256, width=512, seed=1))
    export_bundle(SHIPPED_WEIGHTS, root / "bundle", ExportConfig(height=256, width=512))
    images = np.stack(list(CalibrationSet.select(root / "data", Preprocessing(), (256, 512), num=2)))
    return onnx.load(str(root / "bundle" / ONNX_FP32)), images


def test_one_thread_would_round_differently(wide, tmp_path):
    """Why the CPU runs at least two threads: one moves some ranges by an ulp (research: 13 of
    65 tensors at 256x512), which would make a bundle's INT8 graphs depend on the machine."""
    proto, images = wide
    measured, _ = needed_tensors(proto)
    runs = {threads: collect_ranges(proto, images, measured, CollectConfig(method="minmax", threads=threads),
                                    tmp_path)[0] for threads in (1, 2, 3)}
    assert runs[2] == runs[3]
    differ = [t for t in measured if runs[1][t] != runs[2][t]]
    assert differ  # what the name says: one thread does round some ranges differently ...
    assert all(np.isclose(runs[1][t], runs[2][t], rtol=1e-5).all() for t in differ)  # ... by about an ulp


def test_bad_settings_are_clear(fornet_bundle, images, tmp_path):
    with pytest.raises(OptionError, match="calibration method"):
        CollectConfig(method="kl")
    proto = onnx.load(str(fornet_bundle / ONNX_FP32))
    with pytest.raises(FornetError, match="needs CUDAExecutionProvider"):  # the CPU wheel has no CUDA
        collect_ranges(proto, images, range_tensors(proto), CollectConfig(device="cuda"), tmp_path)
