// SAN CPU kernels compiled for one instruction set (generic); san_cpu_module.cpp says which one the CPU runs.
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

#if 1

#define REG_BYTES 16
#define NUM_REGS 16
#define RZ_ISA generic
#define RZ_NS relzoo_generic
namespace relzoo_generic {
#include "san_cpu.h"
}  // namespace relzoo_generic
typedef int64_t i64;
#include "san_cpu_api.inc"
#endif
