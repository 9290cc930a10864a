"""Real-hardware drivers (installed as ``scanctl.drivers``); they depend only on scanctl's interfaces."""
