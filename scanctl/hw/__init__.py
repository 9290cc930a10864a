"""Hardware contracts: the driver interfaces (``typing.Protocol``), the program types the executor streams
to the subsystems, and the registry that builds a subsystem from its URL. The lowest layer but
``scanctl.errors``: it imports nothing above it (numpy only), so a driver author needs nothing else."""
