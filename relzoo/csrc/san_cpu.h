// SAN's relation operators on the CPU: fused kernels for the pairwise (subtraction) and patchwise (concatenation)
// self-attention of the released SAN models, inference and training (forward and backward).
//
// This header is included by each instruction-set translation unit (san_cpu_avx512.cpp, san_cpu_avx2.cpp,
// san_cpu_generic.cpp) inside a namespace of its own, after <cstdint>, <cstring>, <cmath>, <vector>, <algorithm>
// and <omp.h>, with REG_BYTES / NUM_REGS set to the unit's vector registers. Everything is a template on the element
// type T (float, double) and the lane count V; a "segment" is up to V consecutive output pixels of one row, and
// every vector below holds one value per pixel of a segment.
//
// Shared layouts (all C-contiguous; p = k / 2, Hp = H + 2p, Wp = W + 2p, K = k * k, L = H * W):
//   x1            (N, Cr, H, W)       centre term (conv1)
//   x2p           (N, Cr, Hp, Wp)     neighbour term (conv2), padded on every side (reflection or zeros) by the
//                                      caller, whose autograd folds the padded gradient back onto the map
//   vp            (N, Cm, Hp, Wp)     values (conv3), padded
//   out           (N, Cm, H, W)       channel c uses weight group c % Cw
// The footprint tap j = kh * k + kw of pixel (h, w) reads padded position (h + kh, w + kw) (stride 1, dilation 1).
// Items of work are segments (n, h, w0) unless a kernel says otherwise; kernels that scatter into padded maps own
// whole (n, c) planes. Per-thread partial sums of weight gradients and statistics are reduced at the end (double).

typedef int64_t i64;

template <typename T, int V> struct vec_of;
template <int V> struct vec_of<float, V> {
    typedef float type __attribute__((vector_size(4 * V)));
    typedef int32_t itype __attribute__((vector_size(4 * V)));
};
template <int V> struct vec_of<double, V> {
    typedef double type __attribute__((vector_size(8 * V)));
    typedef int64_t itype __attribute__((vector_size(8 * V)));
};

#define RZ_INLINE inline __attribute__((always_inline))

// No std:: template is instantiated on this unit's types or code paths: the three instruction-set units would each
// emit a weak copy of it, and the linker would keep one of them for all (AVX-512 code on an AVX2 machine). Buffers,
// min and max are defined here, inside the unit's namespace.
static RZ_INLINE i64 imin(i64 a, i64 b) { return a < b ? a : b; }
static RZ_INLINE i64 imax(i64 a, i64 b) { return a > b ? a : b; }

// a zeroed, 64-byte aligned array (of vectors or scalars)
template <typename VT> struct VBuf {
    VT* ptr;
    size_t n;
    explicit VBuf(i64 count) : ptr(nullptr), n((size_t)(count > 0 ? count : 1)) {
        size_t bytes = (n * sizeof(VT) + 63) / 64 * 64;
        ptr = static_cast<VT*>(std::aligned_alloc(64, bytes));
        if (ptr == nullptr) {  // a few KiB of scratch: nothing sensible is left to do (no exception crosses ctypes)
            std::fprintf(stderr, "relzoo SAN CPU kernel: out of memory for %zu bytes of scratch\n", bytes);
            std::abort();
        }
        std::memset(static_cast<void*>(ptr), 0, bytes);
    }
    ~VBuf() { std::free(ptr); }
    VBuf(const VBuf&) = delete;
    VBuf& operator=(const VBuf&) = delete;
    VT& operator[](i64 i) { return ptr[i]; }
    const VT& operator[](i64 i) const { return ptr[i]; }
    VT* data() { return ptr; }
    const VT* data() const { return ptr; }
    void zero() { std::memset(static_cast<void*>(ptr), 0, n * sizeof(VT)); }
};


// ------------------------------------------------------------------------------------------------------------------
// vectors
// ------------------------------------------------------------------------------------------------------------------
template <typename T, int V> struct Vx {
    typedef typename vec_of<T, V>::type vt;
    typedef typename vec_of<T, V>::itype it;

    static RZ_INLINE vt zero() { return vt{} ; }
    static RZ_INLINE vt set1(T s) { return vt{} + s; }
    static RZ_INLINE vt load(const T* p) { vt v; std::memcpy(&v, p, sizeof(vt)); return v; }
    static RZ_INLINE void store(T* p, vt v) { std::memcpy(p, &v, sizeof(vt)); }
    static RZ_INLINE vt loadn(const T* p, int n) {
        vt v = vt{};
        T* d = reinterpret_cast<T*>(&v);
        for (int t = 0; t < n; ++t) d[t] = p[t];
        return v;
    }
    static RZ_INLINE void storen(T* p, vt v, int n) {
        if (n == V) { store(p, v); return; }
        const T* s = reinterpret_cast<const T*>(&v);
        for (int t = 0; t < n; ++t) p[t] = s[t];
    }
    // lanes [0, n) of p[0..V), zero elsewhere (keep: lane_mask(n)); never reads at or past `end`
    static RZ_INLINE vt loadm(const T* p, int n, const T* end, it keep) {
        if (n == V) return load(p);
        if (p + V <= end) return keep ? load(p) : vt{};
        return loadn(p, n);
    }
    // writes lanes [0, n) of v to p; lanes past n keep their values, rewritten whole when p + V <= end, so `end`
    // must bound memory no other thread writes meanwhile
    static RZ_INLINE void storem(T* p, vt v, int n, const T* end, it keep) {
        if (n == V) { store(p, v); return; }
        if (p + V <= end) { store(p, keep ? v : load(p)); return; }
        storen(p, v, n);
    }
    static RZ_INLINE vt relu(vt x) { return x > 0 ? x : vt{}; }
    static RZ_INLINE vt max(vt a, vt b) { return a > b ? a : b; }
    static RZ_INLINE T hsum(vt v) {
        const T* s = reinterpret_cast<const T*>(&v);
        T r = 0;
        for (int t = 0; t < V; ++t) r += s[t];
        return r;
    }
    static RZ_INLINE double hsum_d(vt v) {
        const T* s = reinterpret_cast<const T*>(&v);
        double r = 0;
        for (int t = 0; t < V; ++t) r += (double)s[t];
        return r;
    }
    struct MaskTable {  // V ones (-1) then V zeros: lanes < n of the vector at table + V - n are -1
        typename std::remove_reference<decltype(it{}[0])>::type v[2 * V];
        MaskTable() {
            for (int t = 0; t < 2 * V; ++t) v[t] = t < V ? -1 : 0;
        }
    };
    static RZ_INLINE it lane_mask(int n) {  // -1 (all bits) in lanes < n, 0 elsewhere: one load from a table
        static const MaskTable table;
        it m;
        std::memcpy(&m, table.v + V - n, sizeof(it));
        return m;
    }
    static RZ_INLINE vt masked(vt v, int n, it keep) { return n == V ? v : (keep ? v : vt{}); }
};

// e^x per lane: float by a Cephes-style polynomial after range reduction (about 1 ulp), double lane by lane with
// std::exp (the double kernels exist for the float64 checks against the reference, not for speed)
template <int V> RZ_INLINE typename vec_of<float, V>::type vexp(typename vec_of<float, V>::type x) {
    typedef typename vec_of<float, V>::type vt;
    typedef typename vec_of<float, V>::itype it;
    x = x < -87.33654f ? vt{} - 87.33654f : x;
    x = x > 88.3762626647949f ? vt{} + 88.3762626647949f : x;
    vt kf = x * 1.44269504088896341f + 12582912.0f;
    kf = kf - 12582912.0f;                                   // round(x / ln 2)
    vt r = x - kf * 0.693359375f;
    r = r + kf * 2.12194440e-4f;
    vt r2 = r * r;
    vt y = ((((((vt{} + 1.9875691500E-4f) * r + 1.3981999507E-3f) * r + 8.3334519073E-3f) * r + 4.1665795894E-2f) * r +
             1.6666665459E-1f) * r + 5.0000001201E-1f) * r2 + r + 1.0f;
    it ki = __builtin_convertvector(kf, it);
    it bits = (ki + 127) << 23;
    vt scale;
    std::memcpy(&scale, &bits, sizeof(vt));
    return y * scale;
}
template <int V> RZ_INLINE typename vec_of<double, V>::type vexp(typename vec_of<double, V>::type x) {
    typedef typename vec_of<double, V>::type vt;
    vt r;
    for (int t = 0; t < V; ++t) r[t] = std::exp(x[t]);
    return r;
}

// ------------------------------------------------------------------------------------------------------------------
// small products on segment vectors
// ------------------------------------------------------------------------------------------------------------------
// Y[o] += sum_c W[o * ldw + c] * X[c] for o < cout (rows of W, a matrix of scalars; X, Y vectors)
template <typename T, int V, int B>
RZ_INLINE void mv_block(const T* W, i64 ldw, i64 cin, const typename Vx<T, V>::vt* X, typename Vx<T, V>::vt* Y) {
    typedef typename Vx<T, V>::vt vt;
    vt acc[B];
    for (int i = 0; i < B; ++i) acc[i] = Y[i];
    for (i64 c = 0; c < cin; ++c) {
        vt x = X[c];
        for (int i = 0; i < B; ++i) acc[i] += W[i * ldw + c] * x;
    }
    for (int i = 0; i < B; ++i) Y[i] = acc[i];
}

template <typename T, int V> struct Blocks {
    static constexpr int vregs = (int)(sizeof(typename Vx<T, V>::vt) / REG_BYTES) > 0
                                     ? (int)(sizeof(typename Vx<T, V>::vt) / REG_BYTES) : 1;
    static constexpr int mv = (NUM_REGS - 4) / vregs >= 8 ? 8 : (NUM_REGS - 4) / vregs >= 4 ? 4 : 2;
};

template <typename T, int V>
RZ_INLINE void mv(const T* W, i64 ldw, i64 cout, i64 cin, const typename Vx<T, V>::vt* X,
                  typename Vx<T, V>::vt* Y) {
    constexpr int B = Blocks<T, V>::mv;
    i64 o = 0;
    for (; o + B <= cout; o += B) mv_block<T, V, B>(W + o * ldw, ldw, cin, X, Y + o);
    for (; o + 2 <= cout; o += 2) mv_block<T, V, 2>(W + o * ldw, ldw, cin, X, Y + o);
    for (; o < cout; ++o) mv_block<T, V, 1>(W + o * ldw, ldw, cin, X, Y + o);
}

// acc[o * cin + c] += sum_j A[j * lda + o] * B[j * ldb + c]: vector accumulators of weight gradients (summed over
// lanes at the end), register-blocked over 4 x 4 (o, c) pairs
template <typename T, int V, int BO, int BC>
RZ_INLINE void outer_block(const typename Vx<T, V>::vt* A, i64 lda, const typename Vx<T, V>::vt* B, i64 ldb, i64 J,
                           typename Vx<T, V>::vt* acc, i64 cin) {
    typedef typename Vx<T, V>::vt vt;
    vt s[BO][BC];
    for (int i = 0; i < BO; ++i)
        for (int k = 0; k < BC; ++k) s[i][k] = vt{};
    for (i64 j = 0; j < J; ++j) {
        vt a[BO], b[BC];
        for (int i = 0; i < BO; ++i) a[i] = A[j * lda + i];
        for (int k = 0; k < BC; ++k) b[k] = B[j * ldb + k];
        for (int i = 0; i < BO; ++i)
            for (int k = 0; k < BC; ++k) s[i][k] += a[i] * b[k];
    }
    for (int i = 0; i < BO; ++i)
        for (int k = 0; k < BC; ++k) acc[i * cin + k] += s[i][k];
}

template <typename T, int V>
RZ_INLINE void outer_acc(const typename Vx<T, V>::vt* A, i64 lda, const typename Vx<T, V>::vt* B, i64 ldb, i64 J,
                         i64 cout, i64 cin, typename Vx<T, V>::vt* acc) {
    i64 o = 0;
    for (; o + 4 <= cout; o += 4) {
        i64 c = 0;
        for (; c + 4 <= cin; c += 4) outer_block<T, V, 4, 4>(A + o, lda, B + c, ldb, J, acc + o * cin + c, cin);
        for (; c < cin; ++c) outer_block<T, V, 4, 1>(A + o, lda, B + c, ldb, J, acc + o * cin + c, cin);
    }
    for (; o < cout; ++o) {
        i64 c = 0;
        for (; c + 4 <= cin; c += 4) outer_block<T, V, 1, 4>(A + o, lda, B + c, ldb, J, acc + o * cin + c, cin);
        for (; c < cin; ++c) outer_block<T, V, 1, 1>(A + o, lda, B + c, ldb, J, acc + o * cin + c, cin);
    }
}

// per-thread accumulators: vectors, summed over threads and lanes into out (as T) at the end
template <typename T, int V> struct ThreadAcc {
    typedef typename Vx<T, V>::vt vt;
    VBuf<vt> data;
    i64 size, threads;
    ThreadAcc(int nthreads, i64 n) : data((i64)nthreads * n), size(n), threads(nthreads) {}
    vt* of(int thread) { return data.data() + (size_t)thread * size; }
    void reduce(T* out, bool add) const {
        for (i64 i = 0; i < size; ++i) {
            double s = 0;
            for (i64 t = 0; t < threads; ++t) s += Vx<T, V>::hsum_d(data[t * size + i]);
            out[i] = add ? (T)(out[i] + s) : (T)s;
        }
    }
};

// per-thread double accumulators of statistics
struct ThreadSums {
    VBuf<double> data;
    i64 size, threads;
    ThreadSums(int nthreads, i64 n) : data((i64)nthreads * n), size(n), threads(nthreads) {}
    double* of(int thread) { return data.data() + (size_t)thread * size; }
    void reduce(double* out) const {
        for (i64 i = 0; i < size; ++i) {
            double s = 0;
            for (i64 t = 0; t < threads; ++t) s += data[t * size + i];
            out[i] = s;
        }
    }
};

struct Geo {
    i64 N, H, W, k, p, Hp, Wp, K, L, segs;
    VBuf<i64> off;  // off[j]: offset of tap j = kh * k + kw in a padded plane, kh * Wp + kw
    Geo(i64 n, i64 h, i64 w, i64 ks, int V)
        : N(n), H(h), W(w), k(ks), p(ks / 2), Hp(h + 2 * (ks / 2)), Wp(w + 2 * (ks / 2)), K(ks * ks), L(h * w),
          segs((w + V - 1) / V), off(ks * ks) {
        for (i64 j = 0; j < K; ++j) off[j] = (j / ks) * Wp + (j % ks);
    }
    i64 items() const { return N * H * segs; }  // (n, h, segment)
};

// one work item of Geo::items(): image n, row h, first column w0 of the segment, its live lanes nl and their mask
template <typename T, int V>
struct Seg {
    i64 n, h, w0;
    int nl;
    typename Vx<T, V>::it keep;
    RZ_INLINE Seg(const Geo& g, i64 item)
        : n(item / (g.H * g.segs)), h((item / g.segs) % g.H), w0((item % g.segs) * V), nl((int)imin(V, g.W - w0)),
          keep(nl == V ? typename Vx<T, V>::it{} - 1 : Vx<T, V>::lane_mask(nl)) {}
};

// the aggregation of one segment: out[n, c, h, w0 + lane] = sum_j A[j * Cw + c % Cw] vp[n, c, tap j] for c < Cm
// (A: the segment's attention weights, rows of Cw per tap; vp: the padded values, (N, Cm, Hp, Wp))
template <typename T, int V>
RZ_INLINE void aggregate_segment(const typename Vx<T, V>::vt* A, const T* vp, const T* vp_end, T* out, const Geo& g,
                                 const Seg<T, V>& s, i64 Cw, i64 Cm) {
    typedef Vx<T, V> X;
    const i64 HWp = g.Hp * g.Wp;
    for (i64 c = 0; c < Cm; ++c) {
        const i64 q = c % Cw;
        const T* vc = vp + (s.n * Cm + c) * HWp + s.h * g.Wp + s.w0;
        typename X::vt acc = typename X::vt{};
        for (i64 j = 0; j < g.K; ++j) acc += A[j * Cw + q] * X::loadm(vc + g.off[j], s.nl, vp_end, s.keep);
        X::storen(out + ((s.n * Cm + c) * g.H + s.h) * g.W + s.w0, acc, s.nl);
    }
}

#define RZ_PARALLEL_ITEMS(nthreads, count, body)                                                  \
    _Pragma("omp parallel num_threads(nthreads)") {                                               \
        const int tid = omp_get_thread_num();                                                     \
        (void)tid;                                                                                \
        _Pragma("omp for schedule(static)") for (i64 item = 0; item < (count); ++item) { body }   \
    }

// ==================================================================================================================
// shared: the aggregation's gradient for the values, gvp[n, c, q] = sum_j w[n, j, c % Cw, q - off_j] gout[n, c, q -
// off_j] over the padded canvas; each thread owns whole (n, c) planes and scatters into them tap by tap (the
// segments of one tap write disjoint ranges, so no store is read back before it retires)
// ==================================================================================================================
template <typename T, int V>
void aggregation_grad_values(const T* w, const T* gout, T* gvp, i64 N, i64 Cw, i64 Cm, i64 H, i64 W, i64 ks,
                             int nthreads) {
    typedef Vx<T, V> X;
    typedef typename X::vt vt;
    typedef typename X::it it;
    const Geo g(N, H, W, ks, V);
    const i64 HW = g.L, HWp = g.Hp * g.Wp;
    const T* w_end = w + N * g.K * Cw * HW;
    const T* g_end = gout + N * Cm * HW;
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")
    for (i64 plane = 0; plane < N * Cm; ++plane) {
        const i64 n = plane / Cm, c = plane % Cm, q = c % Cw;
        T* gp = gvp + plane * HWp;
        const T* gp_end = gp + HWp;
        std::memset(gp, 0, sizeof(T) * HWp);
        const T* go = gout + plane * HW;
        const i64 wfull = W / V * V;
        const int tail = (int)(W - wfull);
        const it keep = X::lane_mask(tail);
        for (i64 j = 0; j < g.K; ++j) {
            const T* wj = w + ((n * g.K + j) * Cw + q) * HW;
            T* gj = gp + g.off[j];
            for (i64 h = 0; h < H; ++h) {
                const T* wr = wj + h * W;
                const T* gr = go + h * W;
                T* dr = gj + h * g.Wp;
                for (i64 w0 = 0; w0 < wfull; w0 += V)
                    X::store(dr + w0, X::load(dr + w0) + X::load(wr + w0) * X::load(gr + w0));
                if (tail) {
                    const vt add = X::loadm(wr + wfull, tail, w_end, keep) * X::loadm(gr + wfull, tail, g_end, keep);
                    X::storem(dr + wfull, X::loadm(dr + wfull, tail, gp_end, keep) + add, tail, gp_end, keep);
                }
            }
        }
    }
}

// ==================================================================================================================
// pairwise (subtraction) attention
// ==================================================================================================================
// The weight network's input at (tap j, pixel l) has Cr + 2 channels, h0 = relu(BN0([x1[l] - x2~[l + off_j],
// p[l] - p~[l + off_j]])). The two position channels are the same for every sample: the caller passes them after
// BN0 and ReLU as hp (2, K, H, W). w1 is the whole first product (Cr, Cr + 2). Training keeps u (N, K, Cr, H, W),
// the first product, and the attention weights w (N, K, Cw, H, W).

// inference: a = BN0(x1) and bp = pad(BN0 scale * x2) on the relation channels, so relu(a - bp[tap]) is h0's relation
// part; w1 has BN3's scale folded in and t3 is BN3's shift; logits = w2 relu(w1 h0 + t3) + b2, softmax over the taps,
// out = sum_j w_j vp[tap j]
template <typename T, int V>
void pair_eval(const T* a, const T* bp, const T* vp, const T* hp, const T* w1, const T* t3, const T* w2, const T* b2,
               T* out, i64 N, i64 Cr, i64 Cw, i64 Cm, i64 H, i64 W, i64 ks, int nthreads) {
    typedef Vx<T, V> X;
    typedef typename X::vt vt;
    const Geo g(N, H, W, ks, V);
    const i64 HWp = g.Hp * g.Wp, HW = g.L, K = g.K, C0 = Cr + 2;
    const T* a_end = a + N * Cr * HW;
    const T* bp_end = bp + N * Cr * HWp;
    const T* vp_end = vp + N * Cm * HWp;
    const T* hp_end = hp + 2 * K * HW;
    _Pragma("omp parallel num_threads(nthreads)") {
        VBuf<vt> A(Cr), H0(C0), U(Cr), LG(K * Cw);
        _Pragma("omp for schedule(static)") for (i64 item = 0; item < g.items(); ++item) {
            const Seg<T, V> sg(g, item);
            const auto& [n, h, w0, nl, keep] = sg;
            for (i64 c = 0; c < Cr; ++c) A[c] = X::loadm(a + ((n * Cr + c) * H + h) * W + w0, nl, a_end, keep);
            for (i64 j = 0; j < K; ++j) {
                const T* bj = bp + n * Cr * HWp + h * g.Wp + w0 + g.off[j];
                for (i64 c = 0; c < Cr; ++c) H0[c] = X::relu(A[c] - X::loadm(bj + c * HWp, nl, bp_end, keep));
                const T* hj = hp + j * HW + h * W + w0;
                H0[Cr] = X::loadm(hj, nl, hp_end, keep);
                H0[Cr + 1] = X::loadm(hj + K * HW, nl, hp_end, keep);
                for (i64 o = 0; o < Cr; ++o) U[o] = X::set1(t3[o]);
                mv<T, V>(w1, C0, Cr, C0, H0.data(), U.data());
                for (i64 o = 0; o < Cr; ++o) U[o] = X::relu(U[o]);
                vt* lg = LG.data() + j * Cw;
                for (i64 q = 0; q < Cw; ++q) lg[q] = X::set1(b2[q]);
                mv<T, V>(w2, Cr, Cw, Cr, U.data(), lg);
            }
            for (i64 q = 0; q < Cw; ++q) {  // softmax over the taps, per weight group
                vt m = LG[q];
                for (i64 j = 1; j < K; ++j) m = X::max(m, LG[j * Cw + q]);
                vt s = vt{};
                for (i64 j = 0; j < K; ++j) {
                    const vt e = vexp<V>(LG[j * Cw + q] - m);
                    LG[j * Cw + q] = e;
                    s += e;
                }
                const vt r = X::set1(1) / s;
                for (i64 j = 0; j < K; ++j) LG[j * Cw + q] *= r;
            }
            aggregate_segment<T, V>(LG.data(), vp, vp_end, out, g, sg, Cw, Cm);
        }
    }
}

// training, pass 1: sums[c] = sum over (n, tap, pixel) of x1 - x2~, sums[Cr + c] = sum of squares (BN0's statistics
// of the relation channels)
template <typename T, int V>
void pair_rel_stats(const T* x1, const T* x2p, double* sums, i64 N, i64 Cr, i64 H, i64 W, i64 ks, int nthreads) {
    typedef Vx<T, V> X;
    typedef typename X::vt vt;
    typedef typename X::it it;
    const Geo g(N, H, W, ks, V);
    const i64 HWp = g.Hp * g.Wp, HW = g.L;
    const T* x1_end = x1 + N * Cr * HW;
    const T* x2_end = x2p + N * Cr * HWp;
    ThreadSums acc(nthreads, 2 * Cr);
    _Pragma("omp parallel num_threads(nthreads)") {
        double* my = acc.of(omp_get_thread_num());
        _Pragma("omp for schedule(static)") for (i64 item = 0; item < N * Cr * H; ++item) {
            const i64 n = item / (Cr * H), c = (item / H) % Cr, h = item % H;
            vt s = vt{}, s2 = vt{};
            for (i64 w0 = 0; w0 < W; w0 += V) {
                const int nl = (int)imin(V, W - w0);
                const it keep = nl == V ? it{} - 1 : X::lane_mask(nl);
                const vt av = X::loadm(x1 + ((n * Cr + c) * H + h) * W + w0, nl, x1_end, keep);
                const T* bj = x2p + (n * Cr + c) * HWp + h * g.Wp + w0;
                for (i64 j = 0; j < g.K; ++j) {
                    const vt z = av - X::loadm(bj + g.off[j], nl, x2_end, keep);
                    s += z;
                    s2 += z * z;
                }
            }
            my[c] += X::hsum_d(s);
            my[Cr + c] += X::hsum_d(s2);
        }
    }
    acc.reduce(sums);
}

// training, pass 2: u = w1 h0 with BN0's batch statistics (s0, t0 on the relation channels), stored
// (N, K, Cr, H, W); sums[o], sums[Cr + o]: sum and sum of squares of u (BN3's statistics)
template <typename T, int V>
void pair_train_u(const T* x1, const T* x2p, const T* hp, const T* s0, const T* t0, const T* w1, T* u, double* sums,
                  i64 N, i64 Cr, i64 H, i64 W, i64 ks, int nthreads) {
    typedef Vx<T, V> X;
    typedef typename X::vt vt;
    const Geo g(N, H, W, ks, V);
    const i64 HWp = g.Hp * g.Wp, HW = g.L, K = g.K, C0 = Cr + 2;
    const T* x1_end = x1 + N * Cr * HW;
    const T* x2_end = x2p + N * Cr * HWp;
    const T* hp_end = hp + 2 * K * HW;
    ThreadSums acc(nthreads, 2 * Cr);
    _Pragma("omp parallel num_threads(nthreads)") {
        double* my = acc.of(omp_get_thread_num());
        VBuf<vt> A(Cr), H0(C0), U(Cr), S(Cr), S2(Cr);
        _Pragma("omp for schedule(static)") for (i64 item = 0; item < g.items(); ++item) {
            const Seg<T, V> sg(g, item);
            const auto& [n, h, w0, nl, keep] = sg;
            for (i64 c = 0; c < Cr; ++c) {
                A[c] = X::loadm(x1 + ((n * Cr + c) * H + h) * W + w0, nl, x1_end, keep);
                S[c] = vt{};
                S2[c] = vt{};
            }
            for (i64 j = 0; j < K; ++j) {
                const T* bj = x2p + n * Cr * HWp + h * g.Wp + w0 + g.off[j];
                for (i64 c = 0; c < Cr; ++c)
                    H0[c] = X::relu((A[c] - X::loadm(bj + c * HWp, nl, x2_end, keep)) * s0[c] + t0[c]);
                const T* hj = hp + j * HW + h * W + w0;
                H0[Cr] = X::loadm(hj, nl, hp_end, keep);
                H0[Cr + 1] = X::loadm(hj + K * HW, nl, hp_end, keep);
                for (i64 o = 0; o < Cr; ++o) U[o] = vt{};
                mv<T, V>(w1, C0, Cr, C0, H0.data(), U.data());
                T* uj = u + ((n * K + j) * Cr) * HW + h * W + w0;
                for (i64 o = 0; o < Cr; ++o) {
                    const vt uo = X::masked(U[o], nl, keep);
                    X::storen(uj + o * HW, uo, nl);
                    S[o] += uo;
                    S2[o] += uo * uo;
                }
            }
            for (i64 o = 0; o < Cr; ++o) {
                my[o] += X::hsum_d(S[o]);
                my[Cr + o] += X::hsum_d(S2[o]);
            }
        }
    }
    acc.reduce(sums);
}

// training, pass 3: logits = w2 relu(s3 u + t3) + b2, w = softmax over the taps (stored, (N, K, Cw, H, W)),
// out = sum_j w_j vp[tap j]
template <typename T, int V>
void pair_train_attend(const T* u, const T* s3, const T* t3, const T* w2, const T* b2, const T* vp, T* wout, T* out,
                       i64 N, i64 Cr, i64 Cw, i64 Cm, i64 H, i64 W, i64 ks, int nthreads) {
    typedef Vx<T, V> X;
    typedef typename X::vt vt;
    const Geo g(N, H, W, ks, V);
    const i64 HWp = g.Hp * g.Wp, HW = g.L, K = g.K;
    const T* u_end = u + N * K * Cr * HW;
    const T* vp_end = vp + N * Cm * HWp;
    _Pragma("omp parallel num_threads(nthreads)") {
        VBuf<vt> H1(Cr), LG(K * Cw);
        _Pragma("omp for schedule(static)") for (i64 item = 0; item < g.items(); ++item) {
            const Seg<T, V> sg(g, item);
            const auto& [n, h, w0, nl, keep] = sg;
            for (i64 j = 0; j < K; ++j) {
                const T* uj = u + ((n * K + j) * Cr) * HW + h * W + w0;
                for (i64 o = 0; o < Cr; ++o) H1[o] = X::relu(X::loadm(uj + o * HW, nl, u_end, keep) * s3[o] + t3[o]);
                vt* lg = LG.data() + j * Cw;
                for (i64 q = 0; q < Cw; ++q) lg[q] = X::set1(b2[q]);
                mv<T, V>(w2, Cr, Cw, Cr, H1.data(), lg);
            }
            for (i64 q = 0; q < Cw; ++q) {
                vt m = LG[q];
                for (i64 j = 1; j < K; ++j) m = X::max(m, LG[j * Cw + q]);
                vt s = vt{};
                for (i64 j = 0; j < K; ++j) {
                    const vt e = vexp<V>(LG[j * Cw + q] - m);
                    LG[j * Cw + q] = e;
                    s += e;
                }
                const vt r = X::set1(1) / s;
                for (i64 j = 0; j < K; ++j) {
                    LG[j * Cw + q] *= r;
                    X::storen(wout + ((n * K + j) * Cw + q) * HW + h * W + w0, LG[j * Cw + q], nl);
                }
            }
            aggregate_segment<T, V>(LG.data(), vp, vp_end, out, g, sg, Cw, Cm);
        }
    }
}

// backward through the aggregation, the softmax, the second product and BN3's ReLU, per segment:
//   gw_j = sum_{c = q mod Cw} gout_c vp_c[tap j],  glogit = w (gw - sum_j w gw),  h1 = relu(s3 u + t3),
//   gw2 += glogit h1^T, gb2 += glogit, gv3 = (w2^T glogit) [s3 u + t3 > 0] (stored into gbuf, (N, K, Cr, H, W)),
//   sums: sum gv3, sum gv3 * uhat3 (uhat3 = (u - mean3) * rstd3), for BN3's backward
template <typename T, int V>
void pair_grad_weights(const T* gout, const T* vp, const T* wsm, const T* u, const T* s3, const T* t3, const T* w2,
                       const T* mean3, const T* rstd3, T* gbuf, T* gw2, T* gb2, double* sums, i64 N, i64 Cr, i64 Cw,
                       i64 Cm, i64 H, i64 W, i64 ks, int nthreads) {
    typedef Vx<T, V> X;
    typedef typename X::vt vt;
    const Geo g(N, H, W, ks, V);
    const i64 HWp = g.Hp * g.Wp, HW = g.L, K = g.K;
    const T* vp_end = vp + N * Cm * HWp;
    const T* u_end = u + N * K * Cr * HW;
    const T* w_end = wsm + N * K * Cw * HW;
    const T* g_end = gout + N * Cm * HW;
    VBuf<T> w2t(Cr * Cw);  // w2^T, rows of Cw
    for (i64 o = 0; o < Cr; ++o)
        for (i64 q = 0; q < Cw; ++q) w2t[o * Cw + q] = w2[q * Cr + o];
    ThreadAcc<T, V> accw(nthreads, Cw * Cr + Cw);
    ThreadSums accs(nthreads, 2 * Cr);
    _Pragma("omp parallel num_threads(nthreads)") {
        const int tid = omp_get_thread_num();
        vt* aw = accw.of(tid);
        double* as = accs.of(tid);
        VBuf<vt> G(Cm), GL(K * Cw), H1(K * Cr), GH(Cr), S(Cr), S2(Cr);
        _Pragma("omp for schedule(static)") for (i64 item = 0; item < g.items(); ++item) {
            const Seg<T, V> sg(g, item);
            const auto& [n, h, w0, nl, keep] = sg;
            for (i64 c = 0; c < Cm; ++c) G[c] = X::loadm(gout + ((n * Cm + c) * H + h) * W + w0, nl, g_end, keep);
            for (i64 j = 0; j < K; ++j) {
                const T* vj = vp + n * Cm * HWp + h * g.Wp + w0 + g.off[j];
                vt* gl = GL.data() + j * Cw;
                for (i64 q = 0; q < Cw; ++q) {  // channels q, q + Cw, q + 2 Cw, ... share weight group q
                    vt acc = vt{};
                    for (i64 c = q; c < Cm; c += Cw) acc += G[c] * X::loadm(vj + c * HWp, nl, vp_end, keep);
                    gl[q] = acc;
                }
            }
            for (i64 q = 0; q < Cw; ++q) {  // softmax backward
                vt dot = vt{};
                for (i64 j = 0; j < K; ++j) {
                    const vt wj = X::loadm(wsm + ((n * K + j) * Cw + q) * HW + h * W + w0, nl, w_end, keep);
                    dot += wj * GL[j * Cw + q];
                    GL[j * Cw + q] *= wj;
                }
                for (i64 j = 0; j < K; ++j) {
                    const vt wj = X::loadm(wsm + ((n * K + j) * Cw + q) * HW + h * W + w0, nl, w_end, keep);
                    GL[j * Cw + q] -= wj * dot;
                }
            }
            for (i64 o = 0; o < Cr; ++o) {
                S[o] = vt{};
                S2[o] = vt{};
            }
            for (i64 j = 0; j < K; ++j) {
                const T* uj = u + ((n * K + j) * Cr) * HW + h * W + w0;
                T* gj = gbuf + ((n * K + j) * Cr) * HW + h * W + w0;
                vt* h1 = H1.data() + j * Cr;
                const vt* gl = GL.data() + j * Cw;
                for (i64 o = 0; o < Cr; ++o) GH[o] = vt{};
                mv<T, V>(w2t.data(), Cw, Cr, Cw, gl, GH.data());
                for (i64 o = 0; o < Cr; ++o) {
                    const vt uo = X::loadm(uj + o * HW, nl, u_end, keep);
                    const vt pre = uo * s3[o] + t3[o];
                    h1[o] = X::relu(pre);
                    const vt gv = pre > 0 ? GH[o] : vt{};
                    X::storen(gj + o * HW, gv, nl);
                    S[o] += gv;
                    S2[o] += gv * ((uo - mean3[o]) * rstd3[o]);
                }
            }
            outer_acc<T, V>(GL.data(), Cw, H1.data(), Cr, K, Cw, Cr, aw);
            for (i64 q = 0; q < Cw; ++q) {
                vt s = vt{};
                for (i64 j = 0; j < K; ++j) s += GL[j * Cw + q];
                aw[Cw * Cr + q] += s;
            }
            for (i64 o = 0; o < Cr; ++o) {
                as[o] += X::hsum_d(S[o]);
                as[Cr + o] += X::hsum_d(S2[o]);
            }
        }
    }
    VBuf<T> tmp(Cw * Cr + Cw);  // the weight gradient, then the bias gradient
    accw.reduce(tmp.data(), false);
    std::memcpy(gw2, tmp.data(), sizeof(T) * Cw * Cr);
    std::memcpy(gb2, tmp.data() + Cw * Cr, sizeof(T) * Cw);
    accs.reduce(sums);
}

// backward through BN3, the first product and BN0's ReLU, per segment: gu = c3 (gv3 - m3 - uhat3 d3) with
// c3 = gamma3 rstd3, m3 = mean(gv3), d3 = mean(gv3 uhat3); h0 recomputed; gw1 += gu h0^T; gh0 = w1^T gu; the
// relation part gv0 = gh0 [s0 z + t0 > 0] is stored over gbuf, with sums of gv0 and gv0 * zhat0 (zhat0 = (z - mean0)
// rstd0); the position part, summed over the samples, is ghp (2, K, H, W). Items are rows (h, segment) with every
// sample, so that ghp has one writer per element.
template <typename T, int V>
void pair_grad_hidden(const T* x1, const T* x2p, const T* hp, const T* u, const T* s0, const T* t0, const T* w1,
                      const T* mean0, const T* rstd0, const T* c3, const T* m3, const T* d3, const T* mean3,
                      const T* rstd3, T* gbuf, T* ghp, T* gw1, double* sums, i64 N, i64 Cr, i64 H, i64 W, i64 ks,
                      int nthreads) {
    typedef Vx<T, V> X;
    typedef typename X::vt vt;
    typedef typename X::it it;
    const Geo g(N, H, W, ks, V);
    const i64 HWp = g.Hp * g.Wp, HW = g.L, K = g.K, C0 = Cr + 2;
    const T* x1_end = x1 + N * Cr * HW;
    const T* x2_end = x2p + N * Cr * HWp;
    const T* hp_end = hp + 2 * K * HW;
    const T* u_end = u + N * K * Cr * HW;
    const T* g_end = gbuf + N * K * Cr * HW;
    VBuf<T> w1t(C0 * Cr);
    for (i64 o = 0; o < Cr; ++o)
        for (i64 c = 0; c < C0; ++c) w1t[c * Cr + o] = w1[o * C0 + c];
    const i64 JB = imax(1, imin(K, (i64)(96 * 1024) / (i64)((Cr + C0) * sizeof(vt))));
    ThreadAcc<T, V> accw(nthreads, Cr * C0);
    ThreadSums accs(nthreads, 2 * Cr);
    _Pragma("omp parallel num_threads(nthreads)") {
        const int tid = omp_get_thread_num();
        vt* aw = accw.of(tid);
        double* as = accs.of(tid);
        VBuf<vt> A(Cr), GU(JB * Cr), H0(JB * C0), GH(C0), S(Cr), S2(Cr), P(JB * 2);
        _Pragma("omp for schedule(static)") for (i64 item = 0; item < H * g.segs; ++item) {
            const i64 h = item / g.segs, w0 = (item % g.segs) * V;
            const int nl = (int)imin(V, W - w0);
            const it keep = nl == V ? it{} - 1 : X::lane_mask(nl);
            for (i64 c = 0; c < Cr; ++c) {
                S[c] = vt{};
                S2[c] = vt{};
            }
            for (i64 j0 = 0; j0 < K; j0 += JB) {
                const i64 jn = imin(JB, K - j0);
                P.zero();  // the position part of gh0, summed over the samples, for this block of taps
                for (i64 n = 0; n < N; ++n) {
                    for (i64 c = 0; c < Cr; ++c)
                        A[c] = X::loadm(x1 + ((n * Cr + c) * H + h) * W + w0, nl, x1_end, keep);
                    for (i64 jj = 0; jj < jn; ++jj) {
                        const i64 j = j0 + jj;
                        const T* uj = u + ((n * K + j) * Cr) * HW + h * W + w0;
                        T* gj = gbuf + ((n * K + j) * Cr) * HW + h * W + w0;
                        vt* gu = GU.data() + jj * Cr;
                        vt* h0 = H0.data() + jj * C0;
                        for (i64 o = 0; o < Cr; ++o) {
                            const vt uhat = (X::loadm(uj + o * HW, nl, u_end, keep) - mean3[o]) * rstd3[o];
                            const vt gv = X::loadm(gj + o * HW, nl, g_end, keep);
                            gu[o] = X::masked((gv - m3[o] - uhat * d3[o]) * c3[o], nl, keep);
                        }
                        const T* bj = x2p + n * Cr * HWp + h * g.Wp + w0 + g.off[j];
                        for (i64 c = 0; c < Cr; ++c) {
                            const vt z = A[c] - X::loadm(bj + c * HWp, nl, x2_end, keep);
                            h0[c] = X::relu(z * s0[c] + t0[c]);
                        }
                        const T* hj = hp + j * HW + h * W + w0;
                        h0[Cr] = X::loadm(hj, nl, hp_end, keep);
                        h0[Cr + 1] = X::loadm(hj + K * HW, nl, hp_end, keep);
                        for (i64 c = 0; c < C0; ++c) GH[c] = vt{};
                        mv<T, V>(w1t.data(), Cr, C0, Cr, gu, GH.data());
                        for (i64 c = 0; c < Cr; ++c) {
                            const vt z = A[c] - X::loadm(bj + c * HWp, nl, x2_end, keep);
                            const vt pre = z * s0[c] + t0[c];
                            const vt gv = X::masked(pre > 0 ? GH[c] : vt{}, nl, keep);
                            X::storen(gj + c * HW, gv, nl);
                            S[c] += gv;
                            S2[c] += gv * ((z - mean0[c]) * rstd0[c]);
                        }
                        P[jj * 2] += GH[Cr];
                        P[jj * 2 + 1] += GH[Cr + 1];
                    }
                    outer_acc<T, V>(GU.data(), Cr, H0.data(), C0, jn, Cr, C0, aw);
                }
                for (i64 jj = 0; jj < jn; ++jj) {
                    T* pj = ghp + (j0 + jj) * HW + h * W + w0;
                    X::storen(pj, P[jj * 2], nl);
                    X::storen(pj + K * HW, P[jj * 2 + 1], nl);
                }
            }
            for (i64 c = 0; c < Cr; ++c) {
                as[c] += X::hsum_d(S[c]);
                as[Cr + c] += X::hsum_d(S2[c]);
            }
        }
    }
    accw.reduce(gw1, false);
    accs.reduce(sums);
}

// backward through BN0 to the inputs: gz = c0 (gv0 - m0 - zhat0 d0), gx1 = sum_j gz_j, gx2p[q] = -sum_j gz_j[q -
// off_j]; each thread owns whole (n, c) planes of gx1 and gx2p and walks them tap by tap
template <typename T, int V>
void pair_grad_inputs(const T* x1, const T* x2p, const T* mean0, const T* rstd0, const T* c0, const T* m0,
                      const T* d0, const T* gbuf, T* gx1, T* gx2p, i64 N, i64 Cr, i64 H, i64 W, i64 ks, int nthreads) {
    typedef Vx<T, V> X;
    typedef typename X::vt vt;
    typedef typename X::it it;
    const Geo g(N, H, W, ks, V);
    const i64 HWp = g.Hp * g.Wp, HW = g.L, K = g.K;
    const T* x1_end = x1 + N * Cr * HW;
    const T* x2_end = x2p + N * Cr * HWp;
    const T* g_end = gbuf + N * K * Cr * HW;
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")
    for (i64 plane = 0; plane < N * Cr; ++plane) {
        const i64 n = plane / Cr, c = plane % Cr;
        const T* a = x1 + plane * HW;
        const T* b = x2p + plane * HWp;
        T* g1 = gx1 + plane * HW;
        T* g2 = gx2p + plane * HWp;
        const T* g1_end = g1 + HW;
        const T* g2_end = g2 + HWp;
        std::memset(g1, 0, sizeof(T) * HW);
        std::memset(g2, 0, sizeof(T) * HWp);
        const T mu = mean0[c], rs = rstd0[c], cc = c0[c], mm = m0[c], dd = d0[c];
        for (i64 j = 0; j < K; ++j) {
            const T* gv = gbuf + ((n * K + j) * Cr + c) * HW;
            const T* bj = b + g.off[j];
            T* g2j = g2 + g.off[j];
            for (i64 h = 0; h < H; ++h)
                for (i64 w0 = 0; w0 < W; w0 += V) {
                    const int nl = (int)imin(V, W - w0);
                    const i64 o = h * W + w0, op = h * g.Wp + w0;
                    if (nl == V) {
                        const vt zhat = (X::load(a + o) - X::load(bj + op) - mu) * rs;
                        const vt gz = (X::load(gv + o) - mm - zhat * dd) * cc;
                        X::store(g1 + o, X::load(g1 + o) + gz);
                        X::store(g2j + op, X::load(g2j + op) - gz);
                        continue;
                    }
                    const it keep = X::lane_mask(nl);
                    const vt zhat = (X::loadm(a + o, nl, x1_end, keep) - X::loadm(bj + op, nl, x2_end, keep) - mu) * rs;
                    const vt gz = X::masked((X::loadm(gv + o, nl, g_end, keep) - mm - zhat * dd) * cc, nl, keep);
                    X::storem(g1 + o, X::loadm(g1 + o, nl, g1_end, keep) + gz, nl, g1_end, keep);
                    X::storem(g2j + op, X::loadm(g2j + op, nl, g2_end, keep) - gz, nl, g2_end, keep);
                }
        }
    }
}

// ==================================================================================================================
// patchwise (concatenation) attention
// ==================================================================================================================
// The weight network's input at pixel l has Cr (K + 1) channels in K + 1 blocks: block 0 is the centre x1[l], block
// 1 + j the neighbour x2~[l + off_j] (official channel Cr + c K + j). Per block b: BN0's s0[b][c], t0[b][c] and the
// first product's columns w1[b] (Cw, Cr). The second product gives K Cw weights per pixel: w2[j] (Cw, Cw), b2[j]
// (Cw) (official row q K + j). No softmax. Training keeps u (N, Cw, H, W) and the weights w (N, K, Cw, H, W).

// u += sum over the K + 1 blocks of w1[b] relu(s0[b] x_b + t0[b]) for one segment
template <typename T, int V>
RZ_INLINE void patch_first_product(const T* x1, const T* x2p, const T* x1_end, const T* x2_end, const T* s0,
                                   const T* t0, const T* w1, const Geo& g, i64 n, i64 h, i64 w0, int nl,
                                   typename Vx<T, V>::it keep, i64 Cr, i64 Cw, typename Vx<T, V>::vt* H0,
                                   typename Vx<T, V>::vt* U) {
    typedef Vx<T, V> X;
    const i64 HW = g.L, HWp = g.Hp * g.Wp;
    const T* a = x1 + (n * Cr * g.H + h) * g.W + w0;
    for (i64 c = 0; c < Cr; ++c) H0[c] = X::relu(X::loadm(a + c * HW, nl, x1_end, keep) * s0[c] + t0[c]);
    mv<T, V>(w1, Cr, Cw, Cr, H0, U);
    for (i64 j = 0; j < g.K; ++j) {
        const T* bj = x2p + n * Cr * HWp + h * g.Wp + w0 + g.off[j];
        const T* sb = s0 + (1 + j) * Cr;
        const T* tb = t0 + (1 + j) * Cr;
        for (i64 c = 0; c < Cr; ++c) H0[c] = X::relu(X::loadm(bj + c * HWp, nl, x2_end, keep) * sb[c] + tb[c]);
        mv<T, V>(w1 + (1 + j) * Cw * Cr, Cr, Cw, Cr, H0, U);
    }
}

// inference: w1 with BN3's scale folded in, t3 = BN3's shift; out = sum_j (w2[j] relu(u) + b2[j]) vp[tap j]
template <typename T, int V>
void patch_eval(const T* x1, const T* x2p, const T* vp, const T* s0, const T* t0, const T* w1, const T* t3,
                const T* w2, const T* b2, T* out, i64 N, i64 Cr, i64 Cw, i64 Cm, i64 H, i64 W, i64 ks, int nthreads) {
    typedef Vx<T, V> X;
    typedef typename X::vt vt;
    const Geo g(N, H, W, ks, V);
    const i64 HWp = g.Hp * g.Wp, HW = g.L, K = g.K;
    const T* x1_end = x1 + N * Cr * HW;
    const T* x2_end = x2p + N * Cr * HWp;
    const T* vp_end = vp + N * Cm * HWp;
    _Pragma("omp parallel num_threads(nthreads)") {
        VBuf<vt> H0(Cr), U(Cw), LG(K * Cw);
        _Pragma("omp for schedule(static)") for (i64 item = 0; item < g.items(); ++item) {
            const Seg<T, V> sg(g, item);
            const auto& [n, h, w0, nl, keep] = sg;
            for (i64 o = 0; o < Cw; ++o) U[o] = X::set1(t3[o]);
            patch_first_product<T, V>(x1, x2p, x1_end, x2_end, s0, t0, w1, g, n, h, w0, nl, keep, Cr, Cw, H0.data(),
                                      U.data());
            for (i64 o = 0; o < Cw; ++o) U[o] = X::relu(U[o]);
            for (i64 j = 0; j < K; ++j) {
                vt* lg = LG.data() + j * Cw;
                for (i64 q = 0; q < Cw; ++q) lg[q] = X::set1(b2[j * Cw + q]);
                mv<T, V>(w2 + j * Cw * Cw, Cw, Cw, Cw, U.data(), lg);
            }
            aggregate_segment<T, V>(LG.data(), vp, vp_end, out, g, sg, Cw, Cm);
        }
    }
}

// training, pass 1: BN0's statistics, sums[b][c] and sums[(K + 1) + b][c] (rows of Cr): sum and sum of squares over
// (n, pixel) of block b's input (x1 for b = 0, x2~[tap b - 1] otherwise)
template <typename T, int V>
void patch_stats0(const T* x1, const T* x2p, double* sums, i64 N, i64 Cr, i64 H, i64 W, i64 ks, int nthreads) {
    typedef Vx<T, V> X;
    typedef typename X::vt vt;
    typedef typename X::it it;
    const Geo g(N, H, W, ks, V);
    const i64 HWp = g.Hp * g.Wp, HW = g.L, K = g.K, B = K + 1;
    const T* x1_end = x1 + N * Cr * HW;
    const T* x2_end = x2p + N * Cr * HWp;
    ThreadSums acc(nthreads, 2 * B * Cr);
    _Pragma("omp parallel num_threads(nthreads)") {
        double* my = acc.of(omp_get_thread_num());
        VBuf<vt> S(B), S2(B);
        _Pragma("omp for schedule(static)") for (i64 item = 0; item < N * Cr * H; ++item) {
            const i64 n = item / (Cr * H), c = (item / H) % Cr, h = item % H;
            S.zero();
            S2.zero();
            for (i64 w0 = 0; w0 < W; w0 += V) {
                const int nl = (int)imin(V, W - w0);
                const it keep = nl == V ? it{} - 1 : X::lane_mask(nl);
                const vt av = X::loadm(x1 + ((n * Cr + c) * H + h) * W + w0, nl, x1_end, keep);
                S[0] += av;
                S2[0] += av * av;
                const T* bj = x2p + (n * Cr + c) * HWp + h * g.Wp + w0;
                for (i64 j = 0; j < K; ++j) {
                    const vt z = X::loadm(bj + g.off[j], nl, x2_end, keep);
                    S[1 + j] += z;
                    S2[1 + j] += z * z;
                }
            }
            for (i64 b = 0; b < B; ++b) {
                my[b * Cr + c] += X::hsum_d(S[b]);
                my[(B + b) * Cr + c] += X::hsum_d(S2[b]);
            }
        }
    }
    acc.reduce(sums);
}

// training, pass 2: u = first product with BN0's batch statistics, stored (N, Cw, H, W); sums[o], sums[Cw + o]
template <typename T, int V>
void patch_train_u(const T* x1, const T* x2p, const T* s0, const T* t0, const T* w1, T* u, double* sums, i64 N,
                   i64 Cr, i64 Cw, i64 H, i64 W, i64 ks, int nthreads) {
    typedef Vx<T, V> X;
    typedef typename X::vt vt;
    const Geo g(N, H, W, ks, V);
    const i64 HWp = g.Hp * g.Wp, HW = g.L;
    const T* x1_end = x1 + N * Cr * HW;
    const T* x2_end = x2p + N * Cr * HWp;
    ThreadSums acc(nthreads, 2 * Cw);
    _Pragma("omp parallel num_threads(nthreads)") {
        double* my = acc.of(omp_get_thread_num());
        VBuf<vt> H0(Cr), U(Cw);
        _Pragma("omp for schedule(static)") for (i64 item = 0; item < g.items(); ++item) {
            const Seg<T, V> sg(g, item);
            const auto& [n, h, w0, nl, keep] = sg;
            U.zero();
            patch_first_product<T, V>(x1, x2p, x1_end, x2_end, s0, t0, w1, g, n, h, w0, nl, keep, Cr, Cw, H0.data(),
                                      U.data());
            for (i64 o = 0; o < Cw; ++o) {
                const vt uo = X::masked(U[o], nl, keep);
                X::storen(u + ((n * Cw + o) * H + h) * W + w0, uo, nl);
                my[o] += X::hsum_d(uo);
                my[Cw + o] += X::hsum_d(uo * uo);
            }
        }
    }
    acc.reduce(sums);
}

// training, pass 3: w_j = w2[j] relu(s3 u + t3) + b2[j] (stored, (N, K, Cw, H, W)), out = sum_j w_j vp[tap j]
template <typename T, int V>
void patch_train_attend(const T* u, const T* s3, const T* t3, const T* w2, const T* b2, const T* vp, T* wout, T* out,
                        i64 N, i64 Cw, i64 Cm, i64 H, i64 W, i64 ks, int nthreads) {
    typedef Vx<T, V> X;
    typedef typename X::vt vt;
    const Geo g(N, H, W, ks, V);
    const i64 HWp = g.Hp * g.Wp, HW = g.L, K = g.K;
    const T* u_end = u + N * Cw * HW;
    const T* vp_end = vp + N * Cm * HWp;
    _Pragma("omp parallel num_threads(nthreads)") {
        VBuf<vt> H1(Cw), LG(K * Cw);
        _Pragma("omp for schedule(static)") for (i64 item = 0; item < g.items(); ++item) {
            const Seg<T, V> sg(g, item);
            const auto& [n, h, w0, nl, keep] = sg;
            for (i64 i = 0; i < Cw; ++i)
                H1[i] = X::relu(X::loadm(u + ((n * Cw + i) * H + h) * W + w0, nl, u_end, keep) * s3[i] + t3[i]);
            for (i64 j = 0; j < K; ++j) {
                vt* lg = LG.data() + j * Cw;
                for (i64 q = 0; q < Cw; ++q) lg[q] = X::set1(b2[j * Cw + q]);
                mv<T, V>(w2 + j * Cw * Cw, Cw, Cw, Cw, H1.data(), lg);
                for (i64 q = 0; q < Cw; ++q) X::storen(wout + ((n * K + j) * Cw + q) * HW + h * W + w0, lg[q], nl);
            }
            aggregate_segment<T, V>(LG.data(), vp, vp_end, out, g, sg, Cw, Cm);
        }
    }
}

// backward through the aggregation, the second product and BN3's ReLU, per segment: gw_j = sum_{c = q mod Cw}
// gout_c vp_c[tap j] (stored, (N, K, Cw, H, W), for the second product's weight gradient), gb2 += gw,
// h1 = relu(s3 u + t3) (stored, (N, Cw, H, W)), gv3 = (sum_j w2[j]^T gw_j) [s3 u + t3 > 0] (stored, (N, Cw, H, W)),
// sums of gv3 and gv3 * uhat3
template <typename T, int V>
void patch_grad_weights(const T* gout, const T* vp, const T* u, const T* s3, const T* t3, const T* w2,
                        const T* mean3, const T* rstd3, T* gl, T* h1, T* gv3, T* gb2, double* sums, i64 N, i64 Cw,
                        i64 Cm, i64 H, i64 W, i64 ks, int nthreads) {
    typedef Vx<T, V> X;
    typedef typename X::vt vt;
    const Geo g(N, H, W, ks, V);
    const i64 HWp = g.Hp * g.Wp, HW = g.L, K = g.K;
    const T* vp_end = vp + N * Cm * HWp;
    const T* u_end = u + N * Cw * HW;
    const T* g_end = gout + N * Cm * HW;
    VBuf<T> w2t(K * Cw * Cw);  // w2[j]^T
    for (i64 j = 0; j < K; ++j)
        for (i64 q = 0; q < Cw; ++q)
            for (i64 i = 0; i < Cw; ++i) w2t[(j * Cw + i) * Cw + q] = w2[(j * Cw + q) * Cw + i];
    ThreadAcc<T, V> accb(nthreads, K * Cw);
    ThreadSums accs(nthreads, 2 * Cw);
    _Pragma("omp parallel num_threads(nthreads)") {
        const int tid = omp_get_thread_num();
        vt* ab = accb.of(tid);
        double* as = accs.of(tid);
        VBuf<vt> G(Cm), GL(Cw), GH(Cw);
        _Pragma("omp for schedule(static)") for (i64 item = 0; item < g.items(); ++item) {
            const Seg<T, V> sg(g, item);
            const auto& [n, h, w0, nl, keep] = sg;
            for (i64 c = 0; c < Cm; ++c) G[c] = X::loadm(gout + ((n * Cm + c) * H + h) * W + w0, nl, g_end, keep);
            GH.zero();
            for (i64 j = 0; j < K; ++j) {
                const T* vj = vp + n * Cm * HWp + h * g.Wp + w0 + g.off[j];
                for (i64 q = 0; q < Cw; ++q) {
                    vt acc = vt{};
                    for (i64 c = q; c < Cm; c += Cw) acc += G[c] * X::loadm(vj + c * HWp, nl, vp_end, keep);
                    GL[q] = acc;
                    ab[j * Cw + q] += acc;
                    X::storen(gl + ((n * K + j) * Cw + q) * HW + h * W + w0, acc, nl);
                }
                mv<T, V>(w2t.data() + j * Cw * Cw, Cw, Cw, Cw, GL.data(), GH.data());
            }
            for (i64 i = 0; i < Cw; ++i) {
                const T* ui = u + ((n * Cw + i) * H + h) * W + w0;
                const vt uo = X::loadm(ui, nl, u_end, keep);
                const vt pre = uo * s3[i] + t3[i];
                const i64 o = ((n * Cw + i) * H + h) * W + w0;
                X::storen(h1 + o, X::relu(pre), nl);
                const vt gv = X::masked(pre > 0 ? GH[i] : vt{}, nl, keep);
                X::storen(gv3 + o, gv, nl);
                as[i] += X::hsum_d(gv);
                as[Cw + i] += X::hsum_d(gv * ((uo - mean3[i]) * rstd3[i]));
            }
        }
    }
    accb.reduce(gb2, false);
    accs.reduce(sums);
}

// backward through BN3 and the first product to BN0's outputs, per segment: gu = c3 (gv3 - m3 - uhat3 d3) (stored,
// (N, Cw, H, W)); per block b, gv0_b = (w1[b]^T gu) [s0[b] x_b + t0[b] > 0] (stored, gbuf (N, K + 1, Cr, H, W)) with
// sums of gv0 and gv0 * zhat0 per (b, c) (rows of Cr: sums, then sums of products)
template <typename T, int V>
void patch_grad_hidden(const T* gv3, const T* u, const T* c3, const T* m3, const T* d3, const T* mean3,
                       const T* rstd3, const T* x1, const T* x2p, const T* s0, const T* t0, const T* w1,
                       const T* mean0, const T* rstd0, T* gbuf, T* gu, T* sums, i64 N, i64 Cr, i64 Cw, i64 H, i64 W,
                       i64 ks, int nthreads) {
    typedef Vx<T, V> X;
    typedef typename X::vt vt;
    const Geo g(N, H, W, ks, V);
    const i64 HWp = g.Hp * g.Wp, HW = g.L, K = g.K, B = K + 1;
    const T* x1_end = x1 + N * Cr * HW;
    const T* x2_end = x2p + N * Cr * HWp;
    const T* u_end = u + N * Cw * HW;
    const T* g_end = gv3 + N * Cw * HW;
    VBuf<T> w1t(B * Cr * Cw);  // w1[b]^T (Cr, Cw)
    for (i64 b = 0; b < B; ++b)
        for (i64 o = 0; o < Cw; ++o)
            for (i64 c = 0; c < Cr; ++c) w1t[(b * Cr + c) * Cw + o] = w1[(b * Cw + o) * Cr + c];
    ThreadAcc<T, V> accs(nthreads, 2 * B * Cr);
    _Pragma("omp parallel num_threads(nthreads)") {
        vt* as = accs.of(omp_get_thread_num());
        VBuf<vt> GU(Cw), GH(Cr);
        _Pragma("omp for schedule(static)") for (i64 item = 0; item < g.items(); ++item) {
            const Seg<T, V> sg(g, item);
            const auto& [n, h, w0, nl, keep] = sg;
            for (i64 o = 0; o < Cw; ++o) {
                const i64 at = ((n * Cw + o) * H + h) * W + w0;
                const vt uhat = (X::loadm(u + at, nl, u_end, keep) - mean3[o]) * rstd3[o];
                GU[o] = X::masked((X::loadm(gv3 + at, nl, g_end, keep) - m3[o] - uhat * d3[o]) * c3[o], nl, keep);
                X::storen(gu + at, GU[o], nl);
            }
            for (i64 b = 0; b < B; ++b) {
                for (i64 c = 0; c < Cr; ++c) GH[c] = vt{};
                mv<T, V>(w1t.data() + b * Cr * Cw, Cw, Cr, Cw, GU.data(), GH.data());
                const T* src = b == 0 ? x1 + (n * Cr * H + h) * W + w0
                                      : x2p + n * Cr * HWp + h * g.Wp + w0 + g.off[b - 1];
                const T* src_end = b == 0 ? x1_end : x2_end;
                const i64 stride = b == 0 ? HW : HWp;
                T* gb = gbuf + ((n * B + b) * Cr) * HW + h * W + w0;
                for (i64 c = 0; c < Cr; ++c) {
                    const vt xv = X::loadm(src + c * stride, nl, src_end, keep);
                    const vt pre = xv * s0[b * Cr + c] + t0[b * Cr + c];
                    const vt gv = X::masked(pre > 0 ? GH[c] : vt{}, nl, keep);
                    X::storen(gb + c * HW, gv, nl);
                    as[b * Cr + c] += gv;
                    as[(B + b) * Cr + c] += gv * ((xv - mean0[b * Cr + c]) * rstd0[b * Cr + c]);
                }
            }
        }
    }
    accs.reduce(sums, false);
}

// the first product's weight gradient, gw1[b][o][c] = sum over (n, pixel) of gu[n][o] relu(s0[b][c] x_b[n][c] +
// t0[b][c]); items are (block, 4 channels), the accumulators one vector per (output, channel)
template <typename T, int V>
void patch_grad_w1(const T* gu, const T* x1, const T* x2p, const T* s0, const T* t0, T* gw1, i64 N, i64 Cr, i64 Cw,
                   i64 H, i64 W, i64 ks, int nthreads) {
    typedef Vx<T, V> X;
    typedef typename X::vt vt;
    typedef typename X::it it;
    const Geo g(N, H, W, ks, V);
    const i64 HWp = g.Hp * g.Wp, HW = g.L, B = g.K + 1, CB = 4, cblocks = (Cr + CB - 1) / CB;
    const T* x1_end = x1 + N * Cr * HW;
    const T* x2_end = x2p + N * Cr * HWp;
    const T* gu_end = gu + N * Cw * HW;
    _Pragma("omp parallel num_threads(nthreads)") {
        VBuf<vt> acc(Cw * CB), hv(CB);
        _Pragma("omp for schedule(static)") for (i64 item = 0; item < B * cblocks; ++item) {
            const i64 b = item / cblocks, c0 = (item % cblocks) * CB, cn = imin(CB, Cr - c0);
            acc.zero();
            for (i64 n = 0; n < N; ++n)
                for (i64 h = 0; h < H; ++h)
                    for (i64 w0 = 0; w0 < W; w0 += V) {
                        const int nl = (int)imin(V, W - w0);
                        const it keep = nl == V ? it{} - 1 : X::lane_mask(nl);
                        for (i64 cc = 0; cc < cn; ++cc) {
                            const i64 c = c0 + cc;
                            const T* src = b == 0 ? x1 + ((n * Cr + c) * H + h) * W + w0
                                                  : x2p + (n * Cr + c) * HWp + h * g.Wp + w0 + g.off[b - 1];
                            const vt xv = X::loadm(src, nl, b == 0 ? x1_end : x2_end, keep);
                            hv[cc] = X::masked(X::relu(xv * s0[b * Cr + c] + t0[b * Cr + c]), nl, keep);
                        }
                        const T* gn = gu + (n * Cw * H + h) * W + w0;
                        for (i64 o = 0; o < Cw; ++o) {
                            const vt go = X::loadm(gn + o * HW, nl, gu_end, keep);
                            for (i64 cc = 0; cc < cn; ++cc) acc[o * CB + cc] += go * hv[cc];
                        }
                    }
            for (i64 o = 0; o < Cw; ++o)
                for (i64 cc = 0; cc < cn; ++cc) gw1[(b * Cw + o) * Cr + c0 + cc] = (T)X::hsum_d(acc[o * CB + cc]);
        }
    }
}

// backward through BN0 to the inputs: gz_b = c0[b] (gv0_b - m0[b] - zhat0_b d0[b]); gx1 = gz_0; gx2p[q] += gz_b[q -
// off_{b-1}] for the taps; each thread owns whole (n, c) planes of gx1 and gx2p
template <typename T, int V>
void patch_grad_inputs(const T* x1, const T* x2p, const T* mean0, const T* rstd0, const T* c0, const T* m0,
                       const T* d0, const T* gbuf, T* gx1, T* gx2p, i64 N, i64 Cr, i64 H, i64 W, i64 ks,
                       int nthreads) {
    typedef Vx<T, V> X;
    typedef typename X::vt vt;
    typedef typename X::it it;
    const Geo g(N, H, W, ks, V);
    const i64 HWp = g.Hp * g.Wp, HW = g.L, K = g.K, B = K + 1;
    const T* x1_end = x1 + N * Cr * HW;
    const T* x2_end = x2p + N * Cr * HWp;
    const T* g_end = gbuf + N * B * Cr * HW;
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")
    for (i64 plane = 0; plane < N * Cr; ++plane) {
        const i64 n = plane / Cr, c = plane % Cr;
        T* g2 = gx2p + plane * HWp;
        const T* g2_end = g2 + HWp;
        std::memset(g2, 0, sizeof(T) * HWp);
        for (i64 b = 0; b < B; ++b) {
            const i64 bc = b * Cr + c;
            const T mu = mean0[bc], rs = rstd0[bc], cc = c0[bc], mm = m0[bc], dd = d0[bc];
            const T* gv = gbuf + ((n * B + b) * Cr + c) * HW;
            const T* src = b == 0 ? x1 + plane * HW : x2p + plane * HWp + g.off[b - 1];
            const T* src_end = b == 0 ? x1_end : x2_end;
            const i64 stride = b == 0 ? W : g.Wp;
            for (i64 h = 0; h < H; ++h)
                for (i64 w0 = 0; w0 < W; w0 += V) {
                    const int nl = (int)imin(V, W - w0);
                    const it keep = nl == V ? it{} - 1 : X::lane_mask(nl);
                    const vt zhat = (X::loadm(src + h * stride + w0, nl, src_end, keep) - mu) * rs;
                    const vt gz = X::masked((X::loadm(gv + h * W + w0, nl, g_end, keep) - mm - zhat * dd) * cc, nl,
                                            keep);
                    if (b == 0) {
                        X::storen(gx1 + plane * HW + h * W + w0, gz, nl);
                    } else {
                        T* dst = g2 + g.off[b - 1] + h * g.Wp + w0;
                        X::storem(dst, X::loadm(dst, nl, g2_end, keep) + gz, nl, g2_end, keep);
                    }
                }
        }
    }
}

// ==================================================================================================================
// 2 x 2 max-pool (stride 2, floor), as F.max_pool2d: the first maximum of each window in row-major order wins, NaN
// propagates; the forward keeps the argmax as one byte per output (0..3) instead of an int64 index
// ==================================================================================================================
template <typename T>
static RZ_INLINE void pool2_window(const T* r0, const T* r1, T& best, uint8_t& at) {
    const T v[4] = {r0[0], r0[1], r1[0], r1[1]};
    best = v[0];
    at = 0;
    for (int t = 1; t < 4; ++t)
        if (v[t] > best || v[t] != v[t]) {  // greater, or NaN (as PyTorch's CPU kernel)
            best = v[t];
            at = (uint8_t)t;
        }
}

// planes of (H, W) -> (H / 2, W / 2), idx: each window's argmax as a byte, 0..3 row-major (may be null)
template <typename T>
void pool2_forward(const T* x, T* out, uint8_t* idx, i64 planes, i64 H, i64 W, int nthreads) {
    const i64 ho = H / 2, wo = W / 2;
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")
    for (i64 row = 0; row < planes * ho; ++row) {
        const i64 plane = row / ho, r = row % ho;
        const T* r0 = x + (plane * H + 2 * r) * W;
        const T* r1 = r0 + W;
        T* o = out + row * wo;
        uint8_t* id = idx ? idx + row * wo : nullptr;
        for (i64 c = 0; c < wo; ++c) {
            uint8_t at;
            pool2_window(r0 + 2 * c, r1 + 2 * c, o[c], at);
            if (id) id[c] = at;
        }
    }
}

// gin (planes, H, W) = gout routed to each window's argmax, zero elsewhere (the odd last row / column included)
template <typename T>
void pool2_backward(const T* gout, const uint8_t* idx, T* gin, i64 planes, i64 H, i64 W, int nthreads) {
    const i64 ho = H / 2, wo = W / 2;
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")
    for (i64 plane = 0; plane < planes; ++plane) {
        T* g = gin + plane * H * W;
        if (H % 2) std::memset(g + (H - 1) * W, 0, sizeof(T) * W);
        for (i64 r = 0; r < ho; ++r) {
            T* g0 = g + 2 * r * W;
            T* g1 = g0 + W;
            const T* go = gout + (plane * ho + r) * wo;
            const uint8_t* id = idx + (plane * ho + r) * wo;
            for (i64 c = 0; c < wo; ++c) {
                const T v = go[c];
                const int at = id[c];
                g0[2 * c] = at == 0 ? v : (T)0;
                g0[2 * c + 1] = at == 1 ? v : (T)0;
                g1[2 * c] = at == 2 ? v : (T)0;
                g1[2 * c + 1] = at == 3 ? v : (T)0;
            }
            if (W % 2) g0[W - 1] = g1[W - 1] = (T)0;
        }
    }
}

// the stem's backward through max-pool and ReLU at once: act = relu(y) (planes, H, W), gy = gout at each window's
// argmax of act where act > 0, zero elsewhere
template <typename T>
void pool2_relu_route(const T* act, const T* gout, T* gy, i64 planes, i64 H, i64 W, int nthreads) {
    const i64 ho = H / 2, wo = W / 2;
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")
    for (i64 plane = 0; plane < planes; ++plane) {
        T* g = gy + plane * H * W;
        const T* a = act + plane * H * W;
        if (H % 2) std::memset(g + (H - 1) * W, 0, sizeof(T) * W);
        for (i64 r = 0; r < ho; ++r) {
            const T* a0 = a + 2 * r * W;
            const T* a1 = a0 + W;
            T* g0 = g + 2 * r * W;
            T* g1 = g0 + W;
            const T* go = gout + (plane * ho + r) * wo;
            for (i64 c = 0; c < wo; ++c) {
                T best;
                uint8_t at;
                pool2_window(a0 + 2 * c, a1 + 2 * c, best, at);
                const T v = best > 0 ? go[c] : (T)0;
                g0[2 * c] = at == 0 ? v : (T)0;
                g0[2 * c + 1] = at == 1 ? v : (T)0;
                g1[2 * c] = at == 2 ? v : (T)0;
                g1[2 * c + 1] = at == 3 ? v : (T)0;
            }
            if (W % 2) g0[W - 1] = g1[W - 1] = (T)0;
        }
    }
}
