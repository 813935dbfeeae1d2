"""Generated protobuf/gRPC code for TF Serving's API (sources in `protos/serving/proto/`).

Regenerate with `make protos`; `tests/serving/test_protos.py` fails if these files are stale.
"""
