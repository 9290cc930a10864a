"""Patient and hardware safety: the profile's limits (:mod:`scanctl.config.limits`), the interlocks (:mod:`.interlocks`)
and the supervisor that watches a running scan (:mod:`.supervisor`); see docs/safety-runtime.md."""
