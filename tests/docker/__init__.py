"""Tests of the container images' build files under docker/ and of their health probe."""
