"""``fornet-deploy info``: what a FoR-Net checkpoint (or the default config) is."""

from __future__ import annotations

from pathlib import Path

from .checkpoint import load_checkpoint
from .fornet import build_model, count_flops, parameter_count


def model_summary(checkpoint: Path | None, height: int = 1024, width: int = 2048) -> dict:
    model = load_checkpoint(checkpoint)[0] if checkpoint else build_model()
    return {
        "source": str(checkpoint) if checkpoint else "default config",
        "parameters": parameter_count(model),
        "parameters (M)": round(parameter_count(model) / 1e6, 3),
        f"GFLOPs at {height}x{width}": round(count_flops(model, height, width) / 1e9, 2),
        "output stride": model.output_stride,
        "config": model.config.to_dict(),
    }
