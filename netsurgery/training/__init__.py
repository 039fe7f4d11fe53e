"""Datasets and partial retraining: Darknet datasets, synthetic tasks, augmentation, loss, anchors, training."""
