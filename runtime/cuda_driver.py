"""What the CUDA driver (libcuda.so.1, through ctypes) says about a GPU: its name and compute
capability. No CUDA toolkit or Python CUDA package is needed; None where there is no driver or GPU."""
from __future__ import annotations

import ctypes

CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 75, 76


def cuda_device(index: int = 0) -> tuple[str, tuple[int, int]] | None:
    """(name, (major, minor)) of CUDA device `index` through the driver API, or None."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    dev, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    name = ctypes.create_string_buffer(256)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGet(ctypes.byref(dev), index) != 0:
        return None
    cuda.cuDeviceGetName(name, 256, dev)
    cuda.cuDeviceGetAttribute(ctypes.byref(major), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)
    return name.value.decode(errors="replace"), (major.value, minor.value)
