"""Tests of the client library and the ml-client CLI."""
