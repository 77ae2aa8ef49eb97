"""Build of relzoo's one compiled part: the SAN CPU kernels (relzoo/csrc -> relzoo._san_cpu, loaded through ctypes by
relzoo/layers/san_native.py). Everything else is in pyproject.toml.

The extension is optional: where it cannot be built (no C++ compiler, no OpenMP), relzoo installs without it and SAN
runs its pure-PyTorch operators (``relzoo.layers.san_native.status()`` says which). It needs no PyTorch headers: the
kernels take raw pointers, so the build has no torch dependency, and OpenMP resolves to the libgomp that torch has
already loaded (one thread pool).
"""
import sys

from setuptools import Extension, setup

SOURCES = ["relzoo/csrc/san_cpu_module.cpp", "relzoo/csrc/san_cpu_avx512.cpp", "relzoo/csrc/san_cpu_avx2.cpp",
           "relzoo/csrc/san_cpu_generic.cpp"]
FLAGS = ["-O3", "-std=c++17", "-fopenmp", "-ffp-contract=fast", "-fno-math-errno", "-Wno-psabi"]

ext_modules = []
if sys.platform.startswith("linux"):   # GCC-style flags and OpenMP; elsewhere the PyTorch operators run
    ext_modules.append(Extension("relzoo._san_cpu", sources=SOURCES, depends=["relzoo/csrc/san_cpu.h",
                                                                              "relzoo/csrc/san_cpu_api.inc"],
                                 extra_compile_args=FLAGS, extra_link_args=["-fopenmp"], language="c++",
                                 optional=True))

setup(ext_modules=ext_modules)
