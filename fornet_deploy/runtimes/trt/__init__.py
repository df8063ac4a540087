"""TensorRT backend: CUDA plumbing, engine metadata checks and the engine runner."""
