"""Issue 15, the old calibration wall: ONNX Runtime's HistogramCollector (entropy) over every tensor
the old ``calibrate`` (quantize_static) calibrated, chunk by chunk, on calibrate's own image
selection: each chunk's two largest histograms (bins, first-chunk threshold, threshold).

    python docs/research/calib_replay.py BUNDLE DATA NUM
"""
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import calibrate

from fornet_deploy.bundle import Bundle
from fornet_deploy.calibration.calibset import bundle_calibration_set
from fornet_deploy.calibration.collect import chunk_size
from fornet_deploy.calibration.qdq import QUANTIZED_OPS, needed_tensors

calibrate.print = lambda *a, **k: None  # its collectors print progress lines
bundle, data, num = sys.argv[1], sys.argv[2], int(sys.argv[3])
b = Bundle.open(bundle, verify=False)
needed = set(needed_tensors(onnx.load(f"{bundle}/model.onnx"))[0])
images = np.stack(list(bundle_calibration_set(b, b.artifacts["model.onnx"]["input_shape"], data, num=num)))
with tempfile.TemporaryDirectory() as tmp:
    cal = calibrate.create_calibrator(Path(f"{bundle}/model.onnx"), list(QUANTIZED_OPS),
                                      augmented_model_path=f"{tmp}/a.onnx",
                                      calibrate_method=calibrate.CalibrationMethod.Entropy,
                                      extra_options={"symmetric": False})
    name = cal.infer_session.get_inputs()[0].name
    n, _, h, w = images.shape
    c = chunk_size(n, h, w)
    trace, first = [], {}
    for s in range(0, n, c):
        feeds = iter([{name: np.array(images[i:i+1])} for i in range(s, s + c)])
        R = type("R", (calibrate.CalibrationDataReader,), {"get_next": lambda self: next(feeds, None)})
        try:
            cal.collect_data(R())
        except ValueError as e:
            trace.append({"chunk": s // c, "error": str(e)[:120]})
            break
        hd = cal.collector.histogram_dict
        for k, v in hd.items():
            first.setdefault(k, float(v[4]))
        big = sorted(((v[0].size, k) for k, v in hd.items()), reverse=True)[:2]
        trace.append({"chunk": s // c, "largest": [(k, int(sz), first[k], float(hd[k][4])) for sz, k in big]})
    hd = cal.collector.histogram_dict
    print(json.dumps({"data": data, "num": num, "chunk": c, "tensors": len(hd), "needed": len(needed),
                      "over_4096": sorted((k, int(v[0].size)) for k, v in hd.items() if v[0].size > 4096),
                      "needed_max_bins": max(int(v[0].size) for k, v in hd.items() if k in needed),
                      "trace": trace}, indent=1))
