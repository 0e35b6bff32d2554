"""StyleMix: faces that carry several chosen attributes at once, built on StyleGAN2."""

__version__ = "0.1.0"
