"""Networks for scale-permuted backbones: plain Keras 3 (TF backend), no gin, no I/O."""
