"""Tests of the load-test workload, shapes and run driver."""
