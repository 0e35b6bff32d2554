"""StyleMix training side: data, StyleGAN2-ADA training, the seeds' methods and evaluation.

`training` may import `stylemix`; `stylemix` never imports `training`.
"""
