#pragma once
// One table of kernels per instruction-set tier. Each tier is a translation unit of its own,
// compiled with that tier's flags (CMakeLists.txt); module.cpp picks a table at run time.
//
// Rule for the tier translation units: everything lives in an anonymous namespace and uses no
// C++ standard-library templates. An inline function instantiated in the AVX-512 unit could
// otherwise be the copy the linker keeps for the portable code, and crash an older CPU.
#include <cstdint>

#include "formats.h"

#if defined(_MSC_VER) && !defined(__clang__)
// MSVC has no __builtin_prefetch, which the tiers' loops call as GCC and Clang spell it: the same
// read hint through SSE's prefetch (x86-64 only; into every cache level, the locality dropped).
#include <xmmintrin.h>
#define __builtin_prefetch(p, ...) _mm_prefetch(reinterpret_cast<const char *>(p), _MM_HINT_T0)
#endif

namespace pybitnet {

// Ternary weights in the kernels' layout (built once by TernaryMatrix in ternary.cpp):
// - each row of `cols` weights is padded with zero weights to kp = a multiple of 256 columns,
//   and rows are padded with zero rows to a multiple of kTileRows;
// - a group is 256 columns of one row in 64 bytes: byte j holds, in bits 2k..2k+1, the code
//   (w + 1: 0, 1, 2) of column 64k + j of the group. One 64-byte load thus splits, with a shift
//   and a mask, into four vectors of codes for four runs of 64 consecutive activations;
// - rows go in tiles of kTileRows, and a tile stores its rows' groups interleaved: group g of
//   row t * kTileRows + i is at byte t * kTileRows * kp / 4 + (g * kTileRows + i) * 64. A tile
//   of rows is read as one sequential stream, which the hardware prefetchers follow well (rows
//   read side by side as separate short streams reached only a third of the memory bandwidth);
// - scales: padded rows x groups float32, groups = 1 (one scale per row: I2_S, HF) or kp / 256
//   (one per 256-block: TQ1_0, TQ2_0).
// The codes stay 2-bit in memory because decoding reads every weight once per token and is
// bound by memory bandwidth; they are widened in registers.
constexpr int kTileRows = 4;

struct TernaryView {
    const uint8_t *codes;
    const float *scales;
    int64_t rows, cols, kp, groups;
};

// Activations quantised per row (docs/SPEC.md §1), padded with zeros to kp columns.
struct QuantizedRows {
    const int8_t *q;       // n x kp
    const float *sx;       // n: s_x = 127 / max(max|x|, 1e-5)
    const int32_t *sums;   // n x (kp / 256): sum of x_q over each 256-block
    const int32_t *total;  // n: sum of x_q over the row
    int64_t n, kp;
    // The same rows as tiles of kAmxTileRows for a tier's tile_activations, or null.
    const int8_t *tiles = nullptr;
};
// Activation rows a tile of tile_activations holds; tiers with tile_activations get tiles from
// BitLinear for this many rows or more, of matrices with one scale a row.
constexpr int64_t kAmxTileRows = 16;

// This thread's scratch buffer number `slot` (kScratchSlots of them) of at least `bytes`,
// 64-byte aligned, kept for its next call; null when out of memory. Defined in the portable
// unit (ternary.cpp), so every tier shares one copy.
enum ScratchSlot : int { kScratchActivationTiles = 0, kScratchUnpackedCodes = 1, kScratchSlots = 2 };
uint8_t *thread_scratch(int slot, int64_t bytes);

// A float or block-quantized matrix as its GGUF file stores it (no repacking): `rows` rows of
// `cols` elements, row r at data + r * row_bytes. fmt: a dense format of formats.h (its rows
// are whole blocks).
struct DenseView {
    const uint8_t *data;
    int64_t rows, cols, row_bytes;
    int fmt;
};
// Decoding works in chunks of 32 columns (one Q block); a matrix is read as kDenseChunk-column
// pieces of kTileRows rows.
constexpr int kDenseChunk = 32;

// Weights quantized per row to int8 (the int8 output head): w = q * scales[row], rows padded to
// kp = a multiple of 256 columns and to a multiple of kTileRows rows with zeros; sums = sum of
// q over each row. Rows go in tiles of kTileRows, which store their rows' 64-column chunks
// interleaved (chunk k of row r at int8_chunk): a tile is read as one sequential stream (rows
// read side by side as separate streams reached half the memory bandwidth).
struct Int8View {
    const int8_t *q;
    const float *scales;
    const int32_t *sums;
    int64_t rows, cols, kp;
};
// How far ahead in a sequential stream of weights the kernels prefetch, into L2 (prefetcht1):
// the int8 tiles without it took 1.7x as long at n = 8 (AVX-512), the one-row F16 kernel 1.7x
// at n = 1 (the hardware prefetchers stop at each 4 KB page); into L1, the prefetches evicted
// the activations.
constexpr int64_t kStreamPrefetch = 8192;
// Columns k .. k + 63 (k a multiple of 64) of row r. static: each unit keeps its own copy (see
// the rule above).
static inline const int8_t *int8_chunk(const Int8View &w, int64_t r, int64_t k) {
    return w.q + r / kTileRows * kTileRows * w.kp + (k / 64 * kTileRows + r % kTileRows) * 64;
}

// Activations quantized per 256-element block for the K-quant kernels (docs/SPEC.md §1, "K-quant
// weights"), as llama.cpp's q8_K: block b of row i holds q[i * cols + 256 b ..] (int8 in
// -127..127), its scale d[i * blocks + b] (x ~ d * q) and the sums of its 16-element runs of q,
// bsums[(i * blocks + b) * 16 ..]. cols is a multiple of 256.
struct BlockQ8Rows {
    const int8_t *q;
    const float *d;
    const int16_t *bsums;
    int64_t n, cols;
};

// Causal attention of n query positions start .. start + n - 1 over the cached keys and values
// 0 .. start + n - 1 of one layer. The key cache is in blocks of kKeyBlock positions, each
// block transposed: kc is n_kv x (ctx / kKeyBlock) x d x kKeyBlock, so the scores of a block
// of positions vectorise over positions and read one contiguous 8 KB run (d = 128, f32). A cache
// laid out n_kv x d x ctx read d strided lines per block instead, from memory, and cost 3x
// (ctx 4096: 6x) as much per decoded token. v: n_kv x ctx x d; q and out: n x n_heads x d. ctx
// is a multiple of kKeyBlock.
//
// The cache's element type (docs/SPEC.md §1, KV cache): kKvF32 (float), kKvF16 (IEEE binary16,
// rounded to nearest even), kKvQ8_0 (ggml's q8_0 per 32 values of one position's head vector).
// q8_0 keeps the same reading order: a key block is the d x kKeyBlock int8 codes, then the
// (d / 32) x kKeyBlock float16 scales (scale of position p's 32-chunk c at c * kKeyBlock + p);
// a value row is d / 32 ggml block_q8_0 (a float16 scale, then 32 int8 codes).
// Reads convert to float32 (q8_0: code * scale, exact in float32) and the math is the same.
// A key block's bytes are kKeyBlock value rows' bytes, for every type.
constexpr int kKeyBlock = 16;
enum KvType : int { kKvF32 = 0, kKvF16 = 1, kKvQ8_0 = 2 };
constexpr int64_t kKvQ8Chunk = 32;  // q8_0: values per scale
constexpr int64_t kv_value_row_bytes(int type, int64_t d) {
    return type == kKvF32 ? 4 * d : type == kKvF16 ? 2 * d : d / kKvQ8Chunk * (2 + kKvQ8Chunk);
}
constexpr int64_t kv_key_block_bytes(int type, int64_t d) {
    return kKeyBlock * kv_value_row_bytes(type, d);
}
struct AttentionArgs {
    const float *q;
    const uint8_t *kc, *v;
    float *out;
    int64_t n, n_heads, n_kv, d, ctx, start;
    float scale;  // 1 / sqrt(d)
    int kv_type;  // KvType
};

struct TierKernels {
    const char *name;
    // Quantises rows r0..r1 of x (n x k float32, row-major) into `out` (whose pointers are
    // writable for those rows) as docs/SPEC.md §1 says, bit for bit with numpy.
    void (*quantize)(const float *x, int64_t k, int64_t r0, int64_t r1, int8_t *q, float *sx,
                     int32_t *sums, int64_t kp);
    // y[b, r] for every activation row b and weight rows r0..r1 (r0 a multiple of kTileRows);
    // y is n x w.rows, row-major.
    void (*matmul)(const TernaryView &w, const QuantizedRows &x, int64_t r0, int64_t r1,
                   float *y);
    // y (n x w.rows) rows r0..r1 (a multiple of kTileRows) = x (n x w.cols) . w^T in float32.
    // x must hold n rows of round_up(cols, kDenseChunk) floats (zero-padded).
    void (*dense_matmul)(const DenseView &w, const float *x, int64_t n, int64_t r0, int64_t r1,
                         float *y);
    // Rows ids[0..n) of w, dequantized into out (n x w.cols).
    void (*dense_rows)(const DenseView &w, const int64_t *ids, int64_t n, float *out);
    // y[b, r] = (q_r . x_q,b) * scales[r] / s_x[b] for weight rows r0..r1 (multiple of kTileRows).
    void (*int8_matmul)(const Int8View &w, const QuantizedRows &x, int64_t r0, int64_t r1,
                        float *y);
    // y[b, r] for weight rows r0..r1 of a Q6_K matrix (read in place) and activation rows x:
    // per super-block an exact integer dot product, then y += (d * d_x) * isum in float32,
    // super-block after super-block (docs/SPEC.md §1), so that every tier gives the same bits.
    void (*q6k_matmul)(const DenseView &w, const BlockQ8Rows &x, int64_t r0, int64_t r1, float *y);
    // The same for a Q4_K matrix: y += (d * d_x) * isum - (dmin * d_x) * msum per super-block.
    void (*q4k_matmul)(const DenseView &w, const BlockQ8Rows &x, int64_t r0, int64_t r1, float *y);
    // out = x / sqrt(mean(x^2) + eps) * w for rows r0..r1 of x (rows of dim).
    void (*rmsnorm)(const float *x, const float *w, int64_t dim, float eps, int64_t r0,
                    int64_t r1, float *out);
    // Rotates x (n x heads x head_dim) in place; cos, sin: n x rope_dim / 2 (per position).
    void (*rope)(float *x, int64_t n, int64_t heads, int64_t head_dim, int64_t rope_dim,
                 const float *cos, const float *sin, bool neox);
    // out[i] = act(g[i]) * u[i] for i in [i0, i1); act 0: silu, 1: relu^2.
    void (*gated)(int act, const float *g, const float *u, int64_t i0, int64_t i1, float *out);
    // Query positions i0..i1 of kv head `kv` (all the q heads that read it).
    void (*attention)(const AttentionArgs &a, int64_t kv, int64_t i0, int64_t i1, float *scratch);
    // Optional (null but in the AMX tier): tile t of x's rows (kAmxTileRows of them) laid out
    // into out (round_up(n, kAmxTileRows) x kp bytes) as this tier's matmul reads x.tiles.
    void (*tile_activations)(const QuantizedRows &x, int64_t t, int8_t *out);
};

extern const TierKernels scalar_kernels;
#ifdef PYBITNET_X86_TIERS
extern const TierKernels avx2_kernels;
extern const TierKernels avx512_kernels;
#endif
#ifdef PYBITNET_AMX_TIER
extern const TierKernels amx_kernels;  // AVX-512 with AMX tiles for BitLinear (tier_amx.cpp)
#endif
#ifdef PYBITNET_ARM_TIERS
extern const TierKernels neon_kernels;     // ARMv8.0 NEON (tier_neon.cpp)
extern const TierKernels neondot_kernels;  // NEON with the dotprod extension (tier_neondot.cpp)
#endif

}  // namespace pybitnet
