"""Training core: stream clips from the shards, train IIC / DualVar, evaluate."""
