"""Training runs: the shared loop, pretraining (`iic train`), fine-tuning, resume, logging, and several
runs side by side."""
