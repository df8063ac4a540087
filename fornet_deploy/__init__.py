"""fornet-deploy: FoR-Net from training to fast, verified inference."""

__version__ = "0.1.0"
