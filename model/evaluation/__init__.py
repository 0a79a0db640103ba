"""Evaluation of trained backbones: retrieval, the linear / kNN probe, the training monitor, order
sensitivity, each method's protocol and the reports."""
