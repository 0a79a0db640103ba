"""The data path of training and evaluation: clips streamed from the shards, their augmentation, and the
encoder input of each view."""
