// SAN CPU kernels compiled for one instruction set (avx512); san_cpu_module.cpp says which one the CPU runs.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi,bmi2,f16c,popcnt")
#define REG_BYTES 64
#define NUM_REGS 32
#define RZ_ISA avx512
#define RZ_NS relzoo_avx512
namespace relzoo_avx512 {
#include "san_cpu.h"
}  // namespace relzoo_avx512
typedef int64_t i64;
#include "san_cpu_api.inc"
#endif
