"""Is an NVIDIA driver installed on this host (loaded or not)? From files only: no NVML, no subprocess.

`migd boot` asks when nvmlInit fails: waiting for the driver makes sense only while one can still appear (its
library or kernel module is installed, the module is just not loaded yet). Every path is a parameter, so tests
fake either case with a temporary tree.
"""

from __future__ import annotations

import glob
import os
from ._record import dataclass
from typing import Callable, List, Mapping, Optional, Sequence

LIBRARY = "libnvidia-ml.so.1"
# Where distributions and NVIDIA's .run installer put it (ld.so's own dirs plus the multiarch ones), and where
# container toolkits mount it; pynvml itself just dlopen()s the soname, so ld.so's cache is asked as well.
LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/lib64",
                "/lib", "/usr/local/lib", "/usr/local/nvidia/lib64", "/usr/lib/wsl/lib")


@dataclass(frozen=True)
class DriverFiles:
    """What of an NVIDIA driver is installed: the NVML library and the kernel module (None: not found)."""

    library: Optional[str] = None
    module: Optional[str] = None
    module_loaded: bool = False

    @property
    def installed(self) -> bool:
        return bool(self.library or self.module)

    def describe(self) -> str:
        """What was found, for the log: "libnvidia-ml.so.1 at /usr/lib64/...; nvidia module installed (...)"."""
        if not self.installed:
            return f"{LIBRARY} not found and no nvidia kernel module installed"
        lib = f"{LIBRARY} at {self.library}" if self.library else f"{LIBRARY} not found"
        if self.module_loaded:
            mod = "nvidia kernel module loaded"
        elif self.module:
            mod = f"nvidia kernel module installed ({self.module}) but not loaded"
        else:
            mod = "no nvidia kernel module installed for this kernel"
        return f"{lib}; {mod}"


def ld_so_conf_dirs(conf: str = "/etc/ld.so.conf") -> List[str]:
    """The directories ld.so.conf (and what it includes, e.g. /etc/ld.so.conf.d/*.conf) adds to the search."""
    out: List[str] = []

    def read(path: str, depth: int) -> None:
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError:
            return
        for line in lines:
            line = line.split("#", 1)[0].strip()
            if line.startswith("include") and depth < 4:
                pattern = line.split(None, 1)[1] if " " in line else ""
                if pattern and not os.path.isabs(pattern):
                    pattern = os.path.join(os.path.dirname(path), pattern)
                for inc in sorted(glob.glob(pattern)):
                    read(inc, depth + 1)
            elif line.startswith("/"):
                out.append(line)

    read(conf, 0)
    return out


def find_library(dirs: Sequence[str] = LIBRARY_DIRS, conf_dirs: Callable[[], List[str]] = ld_so_conf_dirs,
                 env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """Path of libnvidia-ml.so.1 where ld.so looks for it (pynvml dlopen()s the soname): LD_LIBRARY_PATH, the
    directories ld.so.conf names, the usual ones. Read from files: migd starts no process for this."""
    environ: Mapping[str, str] = os.environ if env is None else env
    extra = [d for d in environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    for d in [*extra, *conf_dirs(), *dirs]:
        path = os.path.join(d, LIBRARY)
        if os.path.exists(path):
            return path
    return None


def find_module(modules: Sequence[str] = ("/lib/modules", "/usr/lib/modules"),
                release: Optional[str] = None) -> Optional[str]:
    """A nvidia*.ko[.xz|.zst|.gz] file for the running kernel (distribution packages, DKMS under updates/, the .run
    installer under kernel/drivers/video)."""
    release = release or os.uname().release
    for top in modules:
        found = sorted(glob.glob(os.path.join(top, release, "**", "nvidia*.ko*"), recursive=True))
        if found:
            return found[0]
    return None


def module_loaded(sys_module: str = "/sys/module") -> bool:
    return os.path.isdir(os.path.join(sys_module, "nvidia"))


def detect(library: Callable[[], Optional[str]] = find_library,
           module: Callable[[], Optional[str]] = find_module,
           loaded: Callable[[], bool] = module_loaded) -> DriverFiles:
    is_loaded = loaded()
    return DriverFiles(library(), module() or ("nvidia (loaded)" if is_loaded else None), is_loaded)
