"""The fast part of the bad-input sweep (`tests/cli_sweep.py`): each case, run as its own
`slatte` process, ends with exit code 2 and one error line, no traceback, no hang."""

import cli_sweep


def test_fast_bad_inputs_end_cleanly():
    cases = [case for case in cli_sweep.CASES if case.fast]
    failures = {name: problem for name, problem in cli_sweep.sweep(cases).items() if problem}
    assert not failures, "\n".join(
        f"slatte {name}: {problem}" for name, problem in failures.items()
    )
