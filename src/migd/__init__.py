"""migd: put NVIDIA GPUs into the MIG layout declared in /etc/migd.toml, at every boot."""

__version__ = "0.3.0"
