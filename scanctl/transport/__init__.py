"""What crosses a process boundary: the ZeroMQ wire codec, CurveZMQ security, the event publisher and the
patient table's serial framing. Imports only the layers below it (hw, config), never data, engine or services."""
