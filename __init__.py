"""iic: Inter-Intra Contrastive (IIC) and DualVar self-supervised video representation learning."""

__version__ = "0.1.0"
