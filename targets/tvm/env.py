"""The host and the TVM install: imports, detected CPU, threads, compiler and ffi checks (notes §2, §7)."""

from __future__ import annotations

import importlib.util
import inspect
import os
import shutil
import sys
from importlib import metadata
from types import ModuleType

from accelopt.errors import ConversionError, MissingExtraError

# Frames of the import machinery: `inspect.getmodule` scans every loaded module for each of them, and
# TVMScript calls inspect.stack() for each of the ~500 tensor intrinsics it parses on import, so
# `import tvm.s_tir.tensor_intrin` (every MetaSchedule build worker does it) took 63 s instead of 4 s.
_SOURCELESS_FRAMES = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>", "<ast>", "<string>")
# Tensor intrinsics for GPUs and DSPs: `import tvm.s_tir.tensor_intrin` parses them all as TVMScript (5 s of the
# 11 s each tuning worker spent starting); CPU targets never look them up.
_GPU_INTRINSICS = ("cuda", "rocm", "metal", "hexagon")
# apache-tvm-ffi releases whose tvm.ir.save_json segfaults, killing every tuning run (notes §2).
_BROKEN_FFI = ("0.1.15",)


def require_tvm() -> None:
    """Fail with the extra to install, before any work, when TVM is absent."""
    if importlib.util.find_spec("tvm") is None:
        raise MissingExtraError("tvm", "target tvm")


def fast_inspect() -> None:
    """Map sourceless frames to a module up front so inspect.getmodule never scans sys.modules for them."""
    for name in _SOURCELESS_FRAMES:
        inspect.modulesbyfile.setdefault(name, "builtins")


def cpu_worker_setup() -> None:
    """Start-up of a CPU tuning process or worker: the inspect shortcut, and GPU intrinsics left unparsed."""
    fast_inspect()
    for name in _GPU_INTRINSICS:
        module = f"tvm.s_tir.tensor_intrin.{name}"
        sys.modules.setdefault(module, ModuleType(module))


def import_tvm() -> ModuleType:
    """tvm, with its thread pool sized to the host: the pool reads TVM_NUM_THREADS once, when first used,
    and can only shrink later (a runner lowers it to the count it is asked for)."""
    require_tvm()
    os.environ.setdefault("TVM_NUM_THREADS", str(host_cores()))
    fast_inspect()
    import tvm

    return tvm


def host_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def host_mcpu() -> str:
    """LLVM's name for this CPU (znver4, skylake-avx512, ...): it decides AVX-512/VNNI code generation."""
    from tvm.target.codegen import llvm_get_system_cpu

    return str(llvm_get_system_cpu())


def cuda_arch() -> str:
    """GPU 0's CUDA arch (sm_XY), for a cuda target that does not name one."""
    import tvm

    device = tvm.cuda(0)
    if not device.exist:
        raise ConversionError("tvm device cuda: no CUDA GPU is visible to TVM here; give target.options.arch "
                              "(e.g. sm_90) to build for one without it")
    return "sm_" + str(device.compute_version).replace(".", "")


def cxx_compiler() -> str | None:
    """The C++ compiler export_library links with ($CXX, else g++ / clang++), or None."""
    wanted = os.environ.get("CXX")
    candidates = [wanted] if wanted else ["g++", "clang++"]
    return next((path for c in candidates if (path := shutil.which(c))), None)


def ffi_problem() -> str | None:
    """Why the installed apache-tvm-ffi cannot tune, or None."""
    try:
        version = metadata.version("apache-tvm-ffi")
    except metadata.PackageNotFoundError:
        return None
    if version.startswith(_BROKEN_FFI):
        return (f"apache-tvm-ffi {version} segfaults in tvm.ir.save_json, which every tuning run calls: "
                "pip install 'apache-tvm-ffi==0.1.14.post1'")
    return None
