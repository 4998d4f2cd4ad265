"""The metrics `slatte eval` computes, by name, apart from the metrics themselves so that the
command line offers them without importing torch."""

METRICS = ("accuracy", "fd", "fvd", "motion")
DEFAULT_METRICS = ("accuracy", "fd", "motion")
