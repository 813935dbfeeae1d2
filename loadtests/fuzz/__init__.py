"""A bounded, seeded fuzz campaign against the real server process (`make fuzz`, `python -m loadtests.fuzz`).

| module | what |
| --- | --- |
| `models` | the tiny model repository served (digits, catdog with image bytes, sentiment text, a two-input model) |
| `cases` | what a case is, its seeded random source, and how an answer is judged |
| `grpc_cases`, `rest_cases` | the generators: case `index` of seed `S` is a pure function of `(S, index)` |
| `openapi_cases` | REST cases drawn by schemathesis from `serving/protocol/rest/openapi.json`; answers checked against it |
| `media` | images (real, lying headers, broken) and odd texts |
| `campaign` | start the server on 127.0.0.1, send, judge, watch the process and its RSS |
| `report` | counts, outcomes by status, distinct failures with the command that replays one |
"""
