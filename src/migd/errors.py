"""Errors and exit codes shared across migd."""

from __future__ import annotations

from ._record import dataclass
from typing import List, Optional

# Exit codes: distinct so scripts and systemd can tell outcomes apart (documented in README and migd(8)).
EXIT_OK = 0
EXIT_FAILURE = 1  # a GPU could not be applied / read
EXIT_USAGE = 2  # bad config, bad arguments: nothing was touched
EXIT_DRIFT = 3  # `check`: live layout differs from the config
EXIT_PENDING = 4  # a MIG mode change is pending: needs the GPU idle + reset, or a reboot
EXIT_BUSY = 5  # the lock is held by another migd (instances in use refuse the GPU: EXIT_FAILURE)

# NVML return codes migd cares about (nvml.h); names match NVML_ERROR_*.
NVML_CODES = {
    0: "SUCCESS", 1: "UNINITIALIZED", 2: "INVALID_ARGUMENT", 3: "NOT_SUPPORTED", 4: "NO_PERMISSION",
    5: "ALREADY_INITIALIZED", 6: "NOT_FOUND", 7: "INSUFFICIENT_SIZE", 8: "INSUFFICIENT_POWER",
    9: "DRIVER_NOT_LOADED", 10: "TIMEOUT", 11: "IRQ_ISSUE", 12: "LIBRARY_NOT_FOUND", 13: "FUNCTION_NOT_FOUND",
    14: "CORRUPTED_INFOROM", 15: "GPU_IS_LOST", 16: "RESET_REQUIRED", 17: "OPERATING_SYSTEM",
    18: "LIB_RM_VERSION_MISMATCH", 19: "IN_USE", 20: "MEMORY", 21: "NO_DATA", 22: "VGPU_ECC_NOT_SUPPORTED",
    23: "INSUFFICIENT_RESOURCES", 24: "FREQ_NOT_SUPPORTED", 25: "ARGUMENT_VERSION_MISMATCH", 999: "UNKNOWN",
}
CODE_BY_NAME = {name: code for code, name in NVML_CODES.items()}

SUCCESS = 0
INVALID_ARGUMENT = 2
NOT_SUPPORTED = 3
NO_PERMISSION = 4
NOT_FOUND = 6
DRIVER_NOT_LOADED = 9
LIBRARY_NOT_FOUND = 12
GPU_IS_LOST = 15
RESET_REQUIRED = 16
IN_USE = 19
INSUFFICIENT_RESOURCES = 23
ARGUMENT_VERSION_MISMATCH = 25
UNKNOWN = 999


def code_name(code: int) -> str:
    return NVML_CODES.get(code, f"code {code}")


class MigdError(Exception):
    exit_code = EXIT_FAILURE


def printable(text: str) -> str:
    """Text from outside migd (a process's name, a file name, driver bytes) made safe to print and log: control
    characters are shown escaped, so a name like "x\\nGPU 1: applied" or one with an ESC sequence cannot forge a
    line of migd's output or journal, nor drive the terminal."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
                   for c in text)


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a config file."""

    message: str
    path: str = ""
    line: Optional[int] = None
    key: str = ""

    def __str__(self) -> str:
        where = self.path + (f":{self.line}" if self.line else "")
        prefix = ": ".join(x for x in (where, self.key) if x)
        # escaped whole: a drop-in's file name (anyone may plant one in a sticky migd.d) or a quoted value
        return printable(f"{prefix}: {self.message}" if prefix else self.message)


class ConfigError(MigdError):
    """An invalid configuration: each problem names file, line and key path. No GPU is touched."""

    exit_code = EXIT_USAGE

    def __init__(self, problems: List[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    @classmethod
    def one(cls, message: str, path: str = "", line: Optional[int] = None, key: str = "") -> ConfigError:
        return cls([Problem(message, path, line, key)])


# What an admin can do about a driver refusal, where the code alone does not say. The one place such advice lives.
_HINTS = {
    # RTX PRO 6000/5000 Blackwell Workstation and Max-Q editions ship in a graphics display mode, in which MIG cannot
    # be enabled (MIG user guide, Getting Started). The driver's code for that refusal is not documented; it is
    # NOT_SUPPORTED, like any GPU without MIG (assumed).
    ("nvmlDeviceSetMigMode", NOT_SUPPORTED):
        "MIG cannot be enabled on this GPU as it is set up now. An RTX PRO Blackwell Workstation or Max-Q edition "
        "must first be switched to compute display mode with NVIDIA's Display Mode Selector "
        "(`displaymodeselector --gpumode compute -i N`, a firmware setting; reboot afterwards), then apply again",
    # nvmlInit's codes name the library call, not the admin's problem: say what is missing and what to try.
    ("nvmlInit", LIBRARY_NOT_FOUND):
        "no NVIDIA driver found (libnvidia-ml.so.1 not found): is the NVIDIA driver installed? "
        "To try migd without GPUs: migd --simulate dgx-a100 status",
    ("nvmlInit", DRIVER_NOT_LOADED):
        "the NVIDIA driver is installed but its kernel module is not loaded (`lsmod | grep nvidia`; "
        "`modprobe nvidia`, and `dmesg` for why it did not load)",
    ("nvmlInit", NO_PERMISSION):
        "not allowed to open the NVIDIA devices (/dev/nvidiactl, /dev/nvidia*): run migd as root",
}


def driver_hint(call: str, code: int) -> str:
    return _HINTS.get((call, code), "")


class DriverError(MigdError):
    """A driver call failed. `code` is the NVML return code, whichever backend raised it."""

    def __init__(self, code: int, call: str, gpu: Optional[int] = None, detail: str = ""):
        self.code, self.call, self.gpu = code, call, gpu
        # reason: without the "GPU n: " prefix, for messages that name the GPU themselves (no "GPU 0: GPU 0:")
        hint = driver_hint(call, code)
        self.reason = (f"{call} failed: {code_name(code)}" + (f" ({detail})" if detail else "")
                       + (f": {hint}" if hint else ""))
        super().__init__((f"GPU {gpu}: " if gpu is not None else "") + self.reason)


class UsageError(MigdError):
    """Bad arguments or test settings (--simulate, --sim-state, MIGD_SIM_*): nothing was touched. Its own class, so
    that a ValueError from a bug is never reported as a usage or configuration error."""

    exit_code = EXIT_USAGE


class ReadOnlyViolation(MigdError):
    """A mutating driver call was attempted under the read-only guard."""

    def __init__(self, call: str):
        self.call = call
        super().__init__(f"refused {call}: read-only mode (MIGD_READ_ONLY=1 or a read-only verb) forbids changes")


class LockBusy(MigdError):
    exit_code = EXIT_BUSY
