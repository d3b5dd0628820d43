"""The toolkit root `setup` assembles, exercised with the real CUDA pieces on this machine: the system nvcc (when
there is one) and the cuBLAS/cudart headers and libraries the locked torch brings under `nvidia/cu13`.

The link test builds a real shared library with CMake's FindCUDAToolkit against the assembled root, the way
ggml-cuda links the driver API, and reads its dynamic section: without a driver here, that is the only proof
that the engine will ask for the driver's libcuda.so.1 on a GPU machine."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from kcuda_validate.engine import toolkit as tk
from kcuda_validate.engine.plan import cmake_args

CUDA_H = """
CUresult CUDAAPI cuInit(unsigned int Flags);
CUresult CUDAAPI cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size,
                             const CUmemAllocationProp *prop, unsigned long long flags);
#define cuMemAlloc                          cuMemAlloc_v2
CUresult CUDAAPI cuMemAlloc(CUdeviceptr *dptr, size_t bytesize);
typedef CUresult (CUDAAPI *PFN_cuFoo)(int);
"""


def test_driver_symbols_are_the_calls_and_their_versioned_aliases() -> None:
    assert tk.driver_symbols(CUDA_H) == ("cuInit", "cuMemAlloc", "cuMemAlloc_v2", "cuMemCreate")


def _env_layer() -> Path:
    layer = tk.env_cuda_layer(13)
    if layer is None or not (layer / "include" / "cuda.h").is_file():
        pytest.skip("this environment has no nvidia/cu13 headers (the locked torch brings them)")
    return layer


def _compiler() -> tk.HostCompiler:
    import os

    cc = tk.find_host_compiler(os.environ)
    if cc is None:
        pytest.skip("no C++ compiler here")
    return cc


def _readelf(lib: Path) -> str:
    return subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True, check=True).stdout


def test_the_driver_stub_defines_the_driver_api_under_the_drivers_soname(tmp_path: Path) -> None:
    layer = _env_layer()
    cc = _compiler()
    root = tk.assemble_root(tmp_path / "cuda", [layer], cc.path)
    stub = root / "lib64" / "stubs" / "libcuda.so"
    dynamic = _readelf(stub)
    assert "Library soname: [libcuda.so.1]" in dynamic
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(stub)], capture_output=True, text=True).stdout
    defined = {line.split()[-1] for line in symbols.splitlines() if line.strip()}
    assert {"cuInit", "cuMemCreate", "cuMemAlloc_v2", "cuCtxCreate_v4"} <= defined
    assert (root / "targets/x86_64-linux/include/cublas_v2.h").is_file()
    assert (root / "lib64/libcublas.so").exists()


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("readelf") is None, reason="needs cmake, readelf")
def test_a_library_linked_like_ggml_cuda_needs_libcuda_and_finds_the_runtime_beside_it(tmp_path: Path) -> None:
    import os

    layer = _env_layer()
    cc = _compiler()
    systems = [t for t in tk.find_system_toolkits(os.environ) if t.version.startswith("13.")]
    if not systems:
        pytest.skip("no CUDA 13 nvcc here to configure FindCUDAToolkit with")
    root = tk.assemble_root(tmp_path / "cuda", [systems[0].prefix, layer], cc.path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "CMakeLists.txt").write_text(
        textwrap.dedent(
            """
            cmake_minimum_required(VERSION 3.18)
            project(drvlink C CXX)
            find_package(CUDAToolkit REQUIRED)
            add_library(drvlink SHARED drvlink.cpp)
            target_link_libraries(drvlink PRIVATE CUDA::cudart CUDA::cublas CUDA::cuda_driver)
            """
        )
    )
    (src / "drvlink.cpp").write_text(
        textwrap.dedent(
            """
            #include <cuda.h>
            #include <cuda_runtime.h>
            #include <cublas_v2.h>
            extern "C" int drvlink_probe(void) {
                CUdeviceptr p; cublasHandle_t h;
                if (cuInit(0) != CUDA_SUCCESS) return 1;
                if (cuMemAlloc(&p, 16) != CUDA_SUCCESS) return 2;
                if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) return 3;
                return cudaDeviceSynchronize() == cudaSuccess ? 0 : 4;
            }
            """
        )
    )
    linker = next(a for a in cmake_args((90,), (13, 0)) if a.startswith("-DCMAKE_SHARED_LINKER_FLAGS="))
    build = tmp_path / "build"
    configure = subprocess.run(
        [
            "cmake",
            "-S",
            str(src),
            "-B",
            str(build),
            f"-DCUDAToolkit_ROOT={root}",
            f"-DCUDAToolkit_NVCC_EXECUTABLE={root / 'bin' / 'nvcc'}",
            f"-DCMAKE_CXX_COMPILER={cc.path}",
            linker.replace("\\$", "$"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert configure.returncode == 0, configure.stdout[-2000:] + configure.stderr[-2000:]
    made = subprocess.run(["cmake", "--build", str(build)], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    dynamic = _readelf(build / "libdrvlink.so")
    assert "Shared library: [libcuda.so.1]" in dynamic
    assert "Shared library: [libcublas.so.13]" in dynamic
    assert "Shared library: [libcudart.so.13]" in dynamic
    # The build tree adds its own link directories after ours; the installed engine keeps only ours + $ORIGIN.
    assert "Library runpath: [$ORIGIN/../../nvidia/cu13/lib:" in dynamic
