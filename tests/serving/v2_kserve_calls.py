"""Calls a running server with KServe's own V2 clients (`kserve.InferenceRESTClient`,
`kserve.InferenceGRPCClient`), prints JSON.

Run by tests/serving/test_v2_kserve_sdk.py with a KServe venv's Python (KServe's SDK pulls in its
model server's stack, so it lives in a venv of its own: `.bench/kserve-venv`, made by
`make bench PEERS=1`) as `python v2_kserve_calls.py REST_URL GRPC_TARGET INPUTS.npz`. The code is
what a KServe user writes; every answer (and every error: status and message) goes to stdout.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import grpc
import httpx
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig


def listed(value: np.ndarray) -> Any:
    if value.dtype == object:
        value = np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else v, otypes=[object])(value)
    return value.tolist()


def request(model: str, tensors: dict[str, np.ndarray], datatypes: dict[str, str], **kwargs: Any) -> InferRequest:
    inputs = []
    for name, value in tensors.items():
        tensor = InferInput(name=name, shape=list(value.shape), datatype=datatypes[name])
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return InferRequest(model_name=model, infer_inputs=inputs, **kwargs)


def outputs_of(response: Any) -> dict[str, Any]:
    return {output.name: listed(output.as_numpy()) for output in response.outputs}


async def main(rest_url: str, grpc_target: str, inputs_path: str) -> dict[str, Any]:
    tensors = dict(np.load(inputs_path, allow_pickle=True))
    digits, texts = tensors["digits"], tensors["sentiment"]
    out: dict[str, Any] = {}

    rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    out["rest_ready"] = [
        await rest.is_server_live(rest_url),
        await rest.is_server_ready(rest_url),
        await rest.is_model_ready(rest_url, "digits"),
    ]
    answer = await rest.infer(rest_url, request("digits", {"image": digits}, {"image": "FP32"}), model_name="digits")
    out["rest_digits"] = outputs_of(answer)
    answer = await rest.infer(
        rest_url, request("sentiment", {"text": texts}, {"text": "BYTES"}, request_id="k-1"), model_name="sentiment"
    )
    out["rest_sentiment"] = outputs_of(answer)
    out["rest_sentiment_id"] = answer.id
    try:
        await rest.infer(rest_url, request("nope", {"image": digits}, {"image": "FP32"}), model_name="nope")
        out["rest_unknown"] = {"status": "OK"}
    except httpx.HTTPStatusError as error:
        out["rest_unknown"] = {"status": error.response.status_code, "message": str(error)}
    await rest.close()

    client = InferenceGRPCClient(grpc_target, timeout=30)
    out["grpc_ready"] = [
        await client.is_server_live(),
        await client.is_server_ready(),
        await client.is_model_ready("digits"),
    ]
    out["grpc_digits"] = outputs_of(await client.infer(request("digits", {"image": digits}, {"image": "FP32"})))
    answer = await client.infer(request("sentiment", {"text": texts}, {"text": "BYTES"}, model_version="1"))
    out["grpc_sentiment"] = outputs_of(answer)
    try:
        await client.infer(request("digits", {"image": digits[:, :14]}, {"image": "FP32"}))
        out["grpc_bad_shape"] = {"status": "OK"}
    except grpc.RpcError as error:
        out["grpc_bad_shape"] = {"status": error.code().name, "message": error.details()}
    await client.close()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:4]))))
