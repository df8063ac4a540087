"""Engine building: TensorRT engines from the bundle's ONNX graphs."""
