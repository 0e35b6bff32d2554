"""Evaluation: the attribute classifier (`classifier`: training it, its held-out numbers), metrics
and the comparison of all methods.

Seeds 7100-7109 of `training.data.synthfaces` are reserved for the attribute classifier
(`classifier.RESERVED_SEEDS`: 7100 training, 7101 held-out, 7102 strong nuisance, 7103 its unit
test): evaluation renders must use other seeds, so the classifier never scores faces it saw.
"""
