"""Layout facts that the kernels of every tier and their callers share. csrc/tiers.h holds the
same values for C++; the binding exports them and tests/kernels/test_layout.py compares."""

import numpy as np

# Positions per block of the key cache: keys are stored n_kv x (ctx / KEY_BLOCK) x head_dim x
# KEY_BLOCK, each block of positions transposed, so that a block's scores vectorise over
# positions (csrc/tiers.h: kKeyBlock). The engine's cache (engine/forward.py) is allocated so.
KEY_BLOCK = 16

# Weight rows per register tile: a tile's rows are stored interleaved, as one stream.
TILE_ROWS = 4

# The base-3 layout of ternary weights (csrc/tiers.h), 1.6 bits a weight: a run is TRIT_RUN
# columns of one row in 64 bytes, byte j holding the codes c_k = w + 1 of columns 64 k + j,
# k = 0..4, as ceil(256 V / 243), V = sum c_k 3^(4 - k) (TQ1_0's digits, most significant
# first). Up to BASE3_MAX_ROWS activation rows, BitLinear reads it where a matrix keeps it.
TRIT_RUN = 320
BASE3_MAX_ROWS = 1


def pack_base3(codes: np.ndarray) -> np.ndarray:
    """The base-3 stream (uint8) of codes int8 (rows, cols) in {-1, 0, 1}, as the native
    TernaryMatrix stores it: rows padded to whole tiles, columns to whole runs, with zeros."""
    rows, cols = codes.shape
    tiles = -(-max(rows, 1) // TILE_ROWS)
    runs = -(-max(cols, 1) // TRIT_RUN)
    c = np.ones((tiles * TILE_ROWS, runs * TRIT_RUN), np.int64)
    c[:rows, :cols] = codes.astype(np.int64) + 1
    # (tile, row in tile, run, digit k, byte j) -> V per (tile, run, row, byte)
    c = c.reshape(tiles, TILE_ROWS, runs, 5, 64)
    value = np.tensordot(c, 3 ** np.arange(4, -1, -1), axes=([3], [0]))
    q = (256 * value + 242) // 243
    return q.transpose(0, 2, 1, 3).astype(np.uint8).ravel()


def unpack_base3(stream: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """codes int8 (rows, cols) in {-1, 0, 1} from pack_base3's stream: code k of byte q is
    (3 m) >> 8 with m = q 3^k mod 256, the top of the base-3 fraction q / 256."""
    runs = -(-max(cols, 1) // TRIT_RUN)
    q = stream.reshape(-1, runs, TILE_ROWS, 64).transpose(0, 2, 1, 3).astype(np.int64)
    digits = [(3 * (q * 3**k % 256)) >> 8 for k in range(5)]  # each (tiles, row, run, byte)
    c = np.stack(digits, axis=3).reshape(-1, runs * TRIT_RUN)
    return (c[:rows, :cols] - 1).astype(np.int8)
