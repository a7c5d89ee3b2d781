"""Is an NVIDIA driver installed on this host (loaded or not)? From files only: no NVML, no subprocess.

`migd boot` asks when nvmlInit fails: waiting for the driver makes sense only while one can still appear: its
kernel module is installed for the running kernel and just not loaded yet, or a module build is queued for it.

"Queued" is read from DKMS's tree (/var/lib/dkms), the way `dkms status` does: an nvidia* module whose source is
registered (`<module>/<version>/source` exists) but which has no built module for the running kernel
(`<module>/<version>/<kernel>/<arch>/module/` holds no .ko), and whose last build did not fail for this kernel (DKMS
keeps `<module>/<version>/build/make.log` after a failed build; its first line names the kernel). Such a build is
what `dkms autoinstall` (dkms.service at boot, where the distribution ships it) would run now. The library
installed, no module for this kernel and no build queued (or the build failed) means nothing will appear: boot
fails at once instead of holding every later unit for driver_wait_timeout. Every path is a parameter, so tests fake
each case with a temporary tree.
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
    build: Optional[ModuleBuild] = None  # DKMS's nvidia module build for the running kernel, if registered

    @property
    def module_may_appear(self) -> bool:
        """Can the kernel module still appear for this kernel: installed (to be loaded), or a build queued?"""
        return bool(self.module or self.module_loaded or (self.build and self.build.queued))

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
            if self.build is not None:
                mod += f", {self.build.describe()}"
        return f"{lib}; {mod}"


@dataclass(frozen=True)
class ModuleBuild:
    """An nvidia module registered with DKMS, as it stands for the running kernel."""

    name: str  # "nvidia/550.54.15"
    release: str  # the running kernel
    failed_log: Optional[str] = None  # make.log of a build that failed for this kernel

    @property
    def queued(self) -> bool:
        return self.failed_log is None

    def describe(self) -> str:
        if self.failed_log:
            return f"DKMS build of {self.name} for {self.release} failed (see {self.failed_log})"
        return f"DKMS build of {self.name} for {self.release} queued (source registered, not built yet)"


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


def find_dkms_build(dkms: str = "/var/lib/dkms", release: Optional[str] = None) -> Optional[ModuleBuild]:
    """The nvidia* module DKMS has registered but not built for the running kernel (see the module docstring);
    None when there is none, or when it is built for this kernel already (then find_module finds the .ko)."""
    release = release or os.uname().release
    found: Optional[ModuleBuild] = None
    for source in sorted(glob.glob(os.path.join(glob.escape(dkms), "nvidia*", "*", "source"))):
        version_dir = os.path.dirname(source)
        built = glob.glob(os.path.join(glob.escape(version_dir), glob.escape(release), "*", "module", "*.ko*"))
        if built:
            return None  # built for this kernel: installed or about to be (find_module decides)
        name = os.path.relpath(version_dir, dkms)
        log = os.path.join(version_dir, "build", "make.log")
        build = ModuleBuild(name, release, log if _log_names_kernel(log, release) else None)
        if found is None or (found.failed_log and build.queued):  # a queued build wins over a failed one
            found = build
    return found


def _log_names_kernel(path: str, release: str) -> bool:
    """DKMS's make.log starts "DKMS make.log for nvidia-550.54.15 for kernel 6.1.0-18-amd64 (x86_64)"."""
    try:
        with open(path, "rb") as f:
            first = f.readline(512).decode("utf-8", errors="replace")
    except OSError:
        return False
    return f" for kernel {release} " in first or first.rstrip().endswith(f" for kernel {release}")


def module_loaded(sys_module: str = "/sys/module") -> bool:
    return os.path.isdir(os.path.join(sys_module, "nvidia"))


def detect(library: Callable[[], Optional[str]] = find_library,
           module: Callable[[], Optional[str]] = find_module,
           loaded: Callable[[], bool] = module_loaded,
           build: Callable[[], Optional[ModuleBuild]] = find_dkms_build) -> DriverFiles:
    is_loaded = loaded()
    ko = module() or ("nvidia (loaded)" if is_loaded else None)
    return DriverFiles(library(), ko, is_loaded, None if ko else build())
