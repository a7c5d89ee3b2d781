"""Boot-test harness: Debian rootfs (rootfs.py) booted under systemd-nspawn (nspawn.py)."""
