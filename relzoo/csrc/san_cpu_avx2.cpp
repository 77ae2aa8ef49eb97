// SAN CPU kernels compiled for one instruction set (avx2); san_cpu_module.cpp says which one the CPU runs.
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
#pragma GCC target("avx2,fma,bmi,bmi2,f16c,popcnt")
#define REG_BYTES 32
#define NUM_REGS 16
#define RZ_ISA avx2
#define RZ_NS relzoo_avx2
namespace relzoo_avx2 {
#include "san_cpu.h"
}  // namespace relzoo_avx2
typedef int64_t i64;
#include "san_cpu_api.inc"
#endif
