"""Data of a run: ISMRMRD raw data (header, writer, reader), reconstruction, and a run's output folder
(every file new). Imports only hw, config, sequence and safety."""
