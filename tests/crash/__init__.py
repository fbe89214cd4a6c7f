"""The SIGKILL crash harnesses (all on ``tests/support/crash_harness.py``) and the child
workloads they kill."""
