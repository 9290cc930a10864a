"""Configuration: strict TOML reading, the system profile (a scanner's limits and subsystem URLs) and scan
protocols, and bounded reading of any file a user names. Below the data, transport, engine and services
layers."""
