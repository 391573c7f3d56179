"""Layout facts that the kernels of every tier and their callers share. csrc/tiers.h holds the
same values for C++; the binding exports them and tests/kernels/test_layout.py compares."""

# Positions per block of the key cache: keys are stored n_kv x (ctx / KEY_BLOCK) x head_dim x
# KEY_BLOCK, each block of positions transposed, so that a block's scores vectorise over
# positions (csrc/tiers.h: kKeyBlock). The engine's cache (engine/forward.py) is allocated so.
KEY_BLOCK = 16
