"""Evaluation: the report, the decoder's imputation quality, the classical baselines' features, figures."""
