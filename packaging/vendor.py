#!/usr/bin/python3
"""Unpack the pinned, hash-checked Python dependencies of packaging/vendor.txt into a directory.

    python3 packaging/vendor.py DEST [--cache DIR] [--pip "PYTHON -m pip"]

Downloads (with `pip download --require-hashes`, once, into the cache) the exact files vendor.txt names, checks
every file's sha256 against vendor.txt whether it came from the cache or not, and copies only the importable
modules (no *.dist-info, no py.typed markers, no examples) into DEST. Stdlib only, Python >= 3.9.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, List, NamedTuple

HERE = Path(__file__).resolve().parent
VENDOR_TXT = HERE / "vendor.txt"

# What each distribution contributes to /usr/lib/migd: the top-level modules migd imports, nothing else.
MODULES: Dict[str, List[str]] = {
    "nvidia-ml-py": ["pynvml.py"],
    "sdnotify": ["sdnotify/"],
    "structlog": ["structlog/"],
    "tomli": ["tomli/"],
    "typing_extensions": ["typing_extensions.py"],
}
SKIP = re.compile(r"(^|/)(__pycache__/|py\.typed$)|\.pyc$")


class Pin(NamedTuple):
    name: str
    version: str
    sha256: str


def read_pins(path: Path = VENDOR_TXT) -> List[Pin]:
    pins = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)\s+--hash=sha256:([0-9a-f]{64})", line)
        if not m:
            raise SystemExit(f"{path}: cannot parse {line!r} (want NAME==VERSION --hash=sha256:HEX)")
        pins.append(Pin(*m.groups()))
    missing = set(MODULES) - {p.name for p in pins}
    extra = {p.name for p in pins} - set(MODULES)
    if missing or extra:
        raise SystemExit(f"{path} and MODULES in {__file__} disagree: missing {sorted(missing)}, extra {sorted(extra)}")
    return pins


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def find_file(cache: Path, pin: Pin) -> Path:
    """The cached wheel or sdist of `pin` whose hash matches, or raise FileNotFoundError."""
    prefix = f"{_norm(pin.name)}-{pin.version}"
    for f in sorted(cache.iterdir()) if cache.is_dir() else []:
        if _norm(f.name).startswith(_norm(prefix)) and f.name.endswith((".whl", ".tar.gz", ".zip")):
            if sha256(f) == pin.sha256:
                return f
    raise FileNotFoundError(f"{pin.name}=={pin.version} with sha256 {pin.sha256[:12]}… not in {cache}")


def download(cache: Path, pip: List[str]) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    cmd = pip + ["download", "--quiet", "--disable-pip-version-check", "--no-deps", "--require-hashes",
                 "-r", str(VENDOR_TXT), "-d", str(cache)]
    print("vendor: " + " ".join(shlex.quote(c) for c in cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)


def default_pip() -> List[str]:
    """A pip that can download: $MIGD_PIP, else /usr/bin/python3 -m pip, else a venv made once in the cache."""
    if os.environ.get("MIGD_PIP"):
        return shlex.split(os.environ["MIGD_PIP"])
    for python in ("/usr/bin/python3", sys.executable):
        if subprocess.run([python, "-m", "pip", "--version"], capture_output=True).returncode == 0:
            return [python, "-m", "pip"]
    return []


def unpack(archive: Path, pin: Pin, dest: Path) -> List[str]:
    """Copy the MODULES of one wheel/sdist into dest; returns the files written (relative to dest)."""
    wanted = MODULES[pin.name]
    written = []

    def keep(rel: str) -> bool:
        return any(rel == w or (w.endswith("/") and rel.startswith(w)) for w in wanted) and not SKIP.search(rel)

    def put(rel: str, data: bytes) -> None:
        if rel.startswith("/") or ".." in rel.split("/"):
            raise SystemExit(f"{archive.name}: unsafe path {rel!r}")
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        out.chmod(0o644)
        written.append(rel)

    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                if not info.is_dir() and keep(info.filename):
                    put(info.filename, z.read(info))
    else:  # sdist: <name>-<version>/<module>/...
        with tarfile.open(archive) as t:
            for member in t.getmembers():
                rel = member.name.split("/", 1)[1] if "/" in member.name else ""
                if member.isfile() and keep(rel):
                    put(rel, t.extractfile(member).read())
    for w in wanted:
        if not any(r == w or r.startswith(w) for r in written):
            raise SystemExit(f"{archive.name}: has no {w}")
    return written


def main(argv: List[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("dest", type=Path)
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("MIGD_PKG_CACHE", "/var/tmp/migd-pkg")) / "vendor")
    ap.add_argument("--pip", help='pip command, e.g. "python3 -m pip" (default: $MIGD_PIP or python3 -m pip)')
    a = ap.parse_args(argv)
    pins = read_pins()
    try:
        files = [find_file(a.cache, p) for p in pins]
    except FileNotFoundError:
        pip = shlex.split(a.pip) if a.pip else default_pip()
        if not pip:  # no pip anywhere: make one (python3-venv brings pip's wheel)
            venv = a.cache.parent / "pip-venv"
            if not (venv / "bin/python").exists():
                subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
            pip = [str(venv / "bin/python"), "-m", "pip"]
        a.cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=str(a.cache.parent)) as tmp:
            download(Path(tmp), pip)
            for f in Path(tmp).iterdir():
                os.replace(f, a.cache / f.name)
        files = [find_file(a.cache, p) for p in pins]  # pip checked the hashes; check them again anyway
    a.dest.mkdir(parents=True, exist_ok=True)
    for pin, f in zip(pins, files):
        n = len(unpack(f, pin, a.dest))
        print(f"vendor: {pin.name}=={pin.version} ({f.name}, sha256 ok): {n} files", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
