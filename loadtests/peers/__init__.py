"""`python -m loadtests.bench --peers`: this server beside KServe and a minimal grpc.aio floor.

| module | what |
| --- | --- |
| `run.py` | the comparison: starts each contender, checks one real answer, drives load, prints the table |
| `wire.py` | request bodies: TF Serving `PredictRequest`, V2 `ModelInferRequest`, the gRPC frame h2load sends |
| `h2load.py` | runs `h2load` and parses its summary and per-request log |
| `procstat.py` | a process tree's CPU time from `/proc/<pid>/stat` |
| `standin.py` | a digits-shaped convnet with random weights, when no digits model is published |
| `minimal_grpc.py` | the floor: one ONNX Runtime session behind a bare grpc.aio `Predict` |
| `catdog.py` | `--model catdog`: catdog's float-pixel and JPEG paths against the same work done in-process |
| `catdog_standin.py` | a catdog-shaped MobileNet (alpha 0.25, 224 px) with random weights, when no catdog is published |
| `kserve_model.py` | the KServe peer: a `kserve.Model` run by the KServe venv's Python, not the project's |
"""
