"""Software hardware (installed as ``scanctl.simulators``); never imports ``scanctl.drivers``."""
