#pragma once
// Cephes' expf for a SIMD float vector type V: exp(x) = 2^n * p(r), n = round(x / ln 2),
// r = x - n ln 2 (|r| <= ln 2 / 2), p a degree-7 polynomial; a few ulp of error. Inputs are
// clamped to [-87.3, 88], where float32 2^n stays finite and normal. V supplies T, set1, add,
// mul, min, max, fmadd (a * b + c), fnmadd (c - a * b), round (to nearest) and
// scale2(p, n) = p * 2^n (n integral).

template <class V>
inline typename V::T cephes_exp(typename V::T x) {
    using T = typename V::T;
    x = V::max(V::min(x, V::set1(88.0f)), V::set1(-87.3f));
    const T n = V::round(V::mul(x, V::set1(1.44269504088896341f)));
    T r = V::fnmadd(n, V::set1(0.693359375f), x);
    r = V::fnmadd(n, V::set1(-2.12194440e-4f), r);
    T p = V::set1(1.9875691500e-4f);
    p = V::fmadd(p, r, V::set1(1.3981999507e-3f));
    p = V::fmadd(p, r, V::set1(8.3334519073e-3f));
    p = V::fmadd(p, r, V::set1(4.1665795894e-2f));
    p = V::fmadd(p, r, V::set1(1.6666665459e-1f));
    p = V::fmadd(p, r, V::set1(5.0000001201e-1f));
    p = V::fmadd(p, V::mul(r, r), V::add(r, V::set1(1.0f)));
    return V::scale2(p, n);
}
