"""The scanner as processes: the control server, driver services, the Python client (and its remote port
of the scan session), the launcher of ``scanctl up``, and the server's copies of runs. The top layer but
the CLI."""
