// The attention kernel and its KV cache reads, compiled by every tier: included at the end of
// float_tiles.h (inside the tier unit's anonymous namespace, after `struct Vf`; see there).

// ---- attention ----

// The KV cache's elements (tiers.h, KvType) read as float32: Keys(block, d, c, j).at(e) =
// element e of the keys of positions j .. j + Vf::N - 1 of a key block, for e in the 32-element
// chunk c .. c + 31 the reader was made for (q8_0: the chunk's scales converted once, not per
// element); values(row, e) = elements e .. e + Vf::N - 1 of a value row (Vf::N divides 32);
// value(row, e) = element e.
template <int Type>
struct KvRead;
template <>
struct KvRead<kKvF32> {
    struct Keys {
        const float *keys;
        Keys(const uint8_t *block, int64_t, int64_t, int64_t j)
            : keys(reinterpret_cast<const float *>(block) + j) {}
        typename Vf::T at(int64_t e) const { return Vf::load(keys + e * kKeyBlock); }
    };
    static typename Vf::T values(const uint8_t *row, int64_t e) {
        return Vf::load(reinterpret_cast<const float *>(row) + e);
    }
    static float value(const uint8_t *row, int64_t e) {
        return reinterpret_cast<const float *>(row)[e];
    }
};
template <>
struct KvRead<kKvF16> {
    struct Keys {
        const uint16_t *keys;
        Keys(const uint8_t *block, int64_t, int64_t, int64_t j)
            : keys(reinterpret_cast<const uint16_t *>(block) + j) {}
        typename Vf::T at(int64_t e) const { return Vf::load_f16(keys + e * kKeyBlock); }
    };
    static typename Vf::T values(const uint8_t *row, int64_t e) {
        return Vf::load_f16(reinterpret_cast<const uint16_t *>(row) + e);
    }
    static float value(const uint8_t *row, int64_t e) {
        return Vf::half(reinterpret_cast<const uint16_t *>(row)[e]);
    }
};
template <>
struct KvRead<kKvQ8_0> {
    static constexpr int64_t C = kKvQ8Chunk;
    struct Keys {
        const int8_t *codes;
        typename Vf::T scale;  // chunk c's, of positions j ..
        Keys(const uint8_t *block, int64_t d, int64_t c, int64_t j)
            : codes(reinterpret_cast<const int8_t *>(block) + j),
              scale(Vf::load_f16(reinterpret_cast<const uint16_t *>(block + d * kKeyBlock) +
                                 c / C * kKeyBlock + j)) {}
        typename Vf::T at(int64_t e) const { return Vf::mul(Vf::load_i8(codes + e * kKeyBlock), scale); }
    };
    static float scale(const uint8_t *chunk) {
        uint16_t h;
        memcpy(&h, chunk, sizeof h);
        return Vf::half(h);
    }
    static typename Vf::T values(const uint8_t *row, int64_t e) {
        const uint8_t *chunk = row + e / C * (2 + C);
        return Vf::mul(Vf::load_i8(reinterpret_cast<const int8_t *>(chunk + 2 + e % C)),
                       Vf::set1(scale(chunk)));
    }
    static float value(const uint8_t *row, int64_t e) {
        const uint8_t *chunk = row + e / C * (2 + C);
        return static_cast<float>(static_cast<int8_t>(chunk[2 + e % C])) * scale(chunk);
    }
};

// Scores of up to 4 query heads (q[0..3], repeats allowed) against keys t .. t + N - 1 (a run
// inside one key block, tiers.h: Vf::N divides kKeyBlock).
// With `fetch`, the cache lines of the next key block and of the values of these positions are
// prefetched along the way (one of each per step of e, as many as a key block has): the caches
// come from memory, evicted by the weights every token, and waiting for each line in turn cost
// twice the time.
template <int Type>
inline void scores4(const float *const q[4], const uint8_t *kc, const uint8_t *v, int64_t d,
                    int64_t t, bool fetch, typename Vf::T acc[4]) {
    const int64_t block_bytes = kv_key_block_bytes(Type, d), j = t % kKeyBlock;
    const uint8_t *block = kc + t / kKeyBlock * block_bytes;
    const char *next = reinterpret_cast<const char *>(block + block_bytes);
    const char *values = reinterpret_cast<const char *>(v + t * kv_value_row_bytes(Type, d));
    for (int g = 0; g < 4; ++g) acc[g] = Vf::zero();
    for (int64_t c = 0; c < d; c += kKvQ8Chunk) {
        const typename KvRead<Type>::Keys keys(block, d, c, j);
        for (int64_t e = c; e < min64(d, c + kKvQ8Chunk); ++e) {
            if (fetch && j == 0 && 64 * e < block_bytes) {  // a key block, 16 value rows
                __builtin_prefetch(next + 64 * e);
                __builtin_prefetch(values + 64 * e);
            }
            const typename Vf::T k = keys.at(e);
            for (int g = 0; g < 4; ++g) acc[g] = Vf::fmadd(Vf::set1(q[g][e]), k, acc[g]);
        }
    }
}

// Turns scores s[0 .. T) into unnormalised probabilities exp(s - max) in place (zeros up to
// Tp, a multiple of Vf::N), and returns 1 / their sum.
inline float softmax_row(float *s, int64_t T, int64_t Tp) {
    for (int64_t t = T; t < Tp; ++t) s[t] = -INFINITY;  // causal mask
    typename Vf::T m = Vf::set1(-INFINITY);
    for (int64_t t = 0; t < Tp; t += Vf::N) m = Vf::max(m, Vf::load(s + t));
    const typename Vf::T mv = Vf::set1(Vf::hmax(m));
    typename Vf::T sum = Vf::zero();
    for (int64_t t = 0; t < Tp; t += Vf::N) {
        const typename Vf::T p = Vf::exp(Vf::sub(Vf::load(s + t), mv));
        Vf::store(s + t, p);
        sum = Vf::add(sum, p);
    }
    for (int64_t t = T; t < Tp; ++t) s[t] = 0.0f;  // exp's clamp leaves ~1e-38 there
    return 1.0f / Vf::hsum(sum);
}

// acc[g] += p[g][t] * values of positions 0 .. T - 1, elements e .. e + 2 Vf::N - 1, for up to 4
// query heads (repeats allowed): each value is read and converted once for all the heads of
// the group. Read once per head instead, one layer's attention at 2048 positions (2B shapes,
// 2 threads) took 1.1-1.4x as long in f32, and q8_0's conversions cost more than its bytes
// saved (it decoded slower than f32).
template <int Type>
inline void weighted4(const float *const p[4], const uint8_t *v, int64_t row_bytes, int64_t T,
                      int64_t e, typename Vf::T acc[4][2]) {
    for (int g = 0; g < 4; ++g) acc[g][0] = acc[g][1] = Vf::zero();
    for (int64_t t = 0; t < T; ++t) {
        const uint8_t *row = v + t * row_bytes;
        const typename Vf::T v0 = KvRead<Type>::values(row, e);
        const typename Vf::T v1 = KvRead<Type>::values(row, e + Vf::N);
        for (int g = 0; g < 4; ++g) {
            const typename Vf::T pg = Vf::set1(p[g][t]);
            acc[g][0] = Vf::fmadd(pg, v0, acc[g][0]);
            acc[g][1] = Vf::fmadd(pg, v1, acc[g][1]);
        }
    }
}

template <int Type>
void attention_of(const AttentionArgs &a, int64_t kv, int64_t i0, int64_t i1, float *scratch) {
    const int64_t group = a.n_heads / a.n_kv, d = a.d, ctx = a.ctx;
    const int64_t row_bytes = kv_value_row_bytes(Type, d);  // ctx of them per head, keys too
    const uint8_t *kc = a.kc + kv * ctx * row_bytes, *v = a.v + kv * ctx * row_bytes;
    const typename Vf::T scale = Vf::set1(a.scale);
    for (int64_t i = i0; i < i1; ++i) {
        const int64_t T = a.start + i + 1;
        const int64_t Tp = (T + Vf::N - 1) / Vf::N * Vf::N;  // <= ctx: ctx is a multiple of 16
        const float *qi = a.q + (i * a.n_heads + kv * group) * d;
        float *oi = a.out + (i * a.n_heads + kv * group) * d;
        for (int64_t g0 = 0; g0 < group; g0 += 4) {
            const float *q[4];
            for (int g = 0; g < 4; ++g) q[g] = qi + min64(g0 + g, group - 1) * d;
            for (int64_t t = 0; t < Tp; t += Vf::N) {
                typename Vf::T acc[4];
                scores4<Type>(q, kc, v, d, t, g0 == 0, acc);
                for (int g = 0; g < 4 && g0 + g < group; ++g)
                    Vf::store(scratch + (g0 + g) * ctx + t, Vf::mul(acc[g], scale));
            }
        }
        for (int64_t g0 = 0; g0 < group; g0 += 4) {
            const int heads = static_cast<int>(min64(4, group - g0));
            const float *p[4];
            float inv[4];
            for (int g = 0; g < 4; ++g) {
                p[g] = scratch + (g0 + min64(g, heads - 1)) * ctx;
                if (g < heads) inv[g] = softmax_row(scratch + (g0 + g) * ctx, T, Tp);
            }
            float *o = oi + g0 * d;
            int64_t e = 0;
            for (; e + 2 * Vf::N <= d; e += 2 * Vf::N) {
                typename Vf::T acc[4][2];
                weighted4<Type>(p, v, row_bytes, T, e, acc);
                for (int g = 0; g < heads; ++g)
                    for (int j = 0; j < 2; ++j)
                        Vf::store(o + g * d + e + j * Vf::N, Vf::mul(acc[g][j], Vf::set1(inv[g])));
            }
            for (; e < d; ++e)
                for (int g = 0; g < heads; ++g) {
                    float acc = 0.0f;
                    for (int64_t t = 0; t < T; ++t)
                        acc += p[g][t] * KvRead<Type>::value(v + t * row_bytes, e);
                    o[g * d + e] = acc * inv[g];
                }
        }
    }
}

void attention(const AttentionArgs &a, int64_t kv, int64_t i0, int64_t i1, float *scratch) {
    if (a.kv_type == kKvF16)
        attention_of<kKvF16>(a, kv, i0, i1, scratch);
    else if (a.kv_type == kKvQ8_0)
        attention_of<kKvQ8_0>(a, kv, i0, i1, scratch);
    else
        attention_of<kKvF32>(a, kv, i0, i1, scratch);
}
