"""Offline stage: decode videos, compute residuals and optical flow, write HDF5 shards (no torch here)."""
