"""The scanner in this process: the state machine, the executor (segment compiler and run loop), a run's
report and outputs, and the one scan session every way of scanning goes through. Imports the layers below
it (docs/architecture.md), never services or the CLI."""
