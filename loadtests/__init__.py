"""Locust load tests for the model server: users (`locustfile`), shapes, samples and the run driver."""
