"""Networks: StyleGAN2 (official StyleGAN2-ADA names) and the attribute classifier."""

from .stylegan2 import Discriminator, Generator, MappingNetwork, SynthesisNetwork

__all__ = ["Generator", "Discriminator", "MappingNetwork", "SynthesisNetwork"]
