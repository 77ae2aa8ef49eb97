// relzoo._san_cpu: a Python extension module holding the SAN CPU kernels (loaded with ctypes by
// relzoo/layers/san_native.py); the module object itself is empty.
#include <Python.h>

// Which kernels this CPU runs: 2 = AVX-512 (F, BW, DQ, VL), 1 = AVX2 + FMA, 0 = the portable build.
extern "C" int relzoo_cpu_isa(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
    return 0;
}

static struct PyModuleDef relzoo_san_cpu_module = {PyModuleDef_HEAD_INIT, "_san_cpu",
                                                   "SAN CPU kernels (used through ctypes by relzoo.layers.san_native)",
                                                   -1, nullptr};

PyMODINIT_FUNC PyInit__san_cpu(void) { return PyModule_Create(&relzoo_san_cpu_module); }
