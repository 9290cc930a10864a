"""Protocol sweeps: many scans through the one scan session, on a Dask cluster (docs/sweep.md)."""
