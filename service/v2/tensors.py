"""The v2 protocol's JSON tensors: an inference request read into texts, answers written as outputs.

The model takes one input, ``text`` (BYTES, shape ``[N]`` or ``[N, 1]``, data flat or nested as
the shape), and answers ``label`` (BYTES), ``score`` (FP32), ``prediction_id`` (BYTES, for
POST /feedback) and ``truncated`` (BOOL), each of shape ``[N]``. Tensors travel as JSON only: the
binary tensor data extension is refused with a 400 that says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from service.errors import InvalidInputError
from service.validation import check_texts, check_user_id

INPUT_NAME = "text"
# output name -> (datatype, the prediction field it carries)
OUTPUTS: dict[str, tuple[str, str]] = {
    "label": ("BYTES", "label"),
    "score": ("FP32", "score"),
    "prediction_id": ("BYTES", "prediction_id"),
    "truncated": ("BOOL", "truncated"),
}
REQUEST_KEYS = ("id", "parameters", "inputs", "outputs")
# request parameters: user_id (the sticky A/B unit); binary_data_output is the binary extension's
# request for binary outputs, answered with JSON outputs instead (which clients read as well)
REQUEST_PARAMETERS = ("user_id", "binary_data_output")
INPUT_PARAMETERS = {"content_type": "str"}  # MLServer's string codec names itself so
OUTPUT_PARAMETERS = ("binary_data",)  # answered as JSON, as binary_data_output
BINARY_UNSUPPORTED = (
    "the binary tensor data extension is not supported: send the tensors as JSON in the body "
    "(tritonclient: set_data_from_numpy(..., binary_data=False))"
)


@dataclass(frozen=True)
class InferRequest:
    """What an inference request asks for: the texts, in order, and how to answer."""

    texts: list[str]
    id: str | None
    outputs: tuple[str, ...]
    user_id: str | None


def metadata_tensors() -> dict[str, list[dict[str, Any]]]:
    """The ``inputs`` and ``outputs`` of the model metadata (-1: any number of texts)."""
    return {
        "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": name, "datatype": datatype, "shape": [-1]}
            for name, (datatype, _) in OUTPUTS.items()
        ],
    }


def parse_infer(body: Any, max_texts: int) -> InferRequest:
    """The texts and options of a v2 inference request body, or an error naming what is wrong."""
    if not isinstance(body, dict):
        raise InvalidInputError(
            'the body must be a JSON object, the v2 inference request {"inputs": [...]}'
        )
    _check_keys(body, REQUEST_KEYS, "field", "the inference request")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInputError(f"id must be a string, got {type(request_id).__name__}")
    parameters = _parameters(body.get("parameters"), "parameters")
    _check_keys(parameters, REQUEST_PARAMETERS, "parameter", "the inference request")
    if "inputs" not in body:
        raise InvalidInputError(f"inputs is required: a list holding one BYTES tensor {_INPUT}")
    return InferRequest(
        texts=_texts(body["inputs"], max_texts),
        id=request_id,
        outputs=_outputs(body.get("outputs")),
        user_id=check_user_id(parameters.get("user_id")),
    )


_INPUT = f'named "{INPUT_NAME}" (shape [N] or [N, 1], N strings)'


def _texts(inputs: Any, max_texts: int) -> list[str]:
    if not isinstance(inputs, list) or len(inputs) != 1:
        got = f"{len(inputs)} inputs" if isinstance(inputs, list) else type(inputs).__name__
        raise InvalidInputError(f"inputs must be a list of one BYTES tensor {_INPUT}; got {got}")
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise InvalidInputError(f"inputs[0] must be a tensor object {_INPUT}")
    name = tensor.get("name")
    if name != INPUT_NAME:
        raise InvalidInputError(f"unknown input {name!r}: the model takes one input {_INPUT}")
    where = f"input {INPUT_NAME!r}"
    for key in ("shape", "datatype", "data"):
        if key not in tensor:
            raise InvalidInputError(
                f"{where} has no {key!r}: a tensor has name, shape, datatype and data"
            )
    _check_keys(tensor, ("name", "shape", "datatype", "data", "parameters"), "field", where)
    parameters = _parameters(tensor.get("parameters"), f"{where} parameters")
    if "binary_data_size" in parameters:
        raise InvalidInputError(BINARY_UNSUPPORTED)
    _check_keys(parameters, tuple(INPUT_PARAMETERS), "parameter", where)
    if parameters.get("content_type", "str") != "str":
        raise InvalidInputError(
            f"{where} content_type must be 'str', got {parameters['content_type']!r}"
        )
    if tensor["datatype"] != "BYTES":
        raise InvalidInputError(
            f"{where} must have datatype BYTES (strings), got {tensor['datatype']!r}"
        )
    shape = _shape(tensor["shape"], where)
    flat = _flatten(tensor["data"], shape, where)
    if shape[0] == 0:
        raise InvalidInputError(f"{where} holds no texts: send at least one")
    return check_texts(flat, max_texts, where=f"{where} data")


def _shape(shape: Any, where: str) -> list[int]:
    ok = isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
    if not ok or len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise InvalidInputError(f"{where} must have shape [N] or [N, 1] (N texts), got {shape!r}")
    return list(shape)


def _flatten(data: Any, shape: list[int], where: str) -> list[Any]:
    """The elements of ``data``, given flat or nested as ``shape`` (row-major)."""
    count = math.prod(shape)
    if not isinstance(data, list):
        raise InvalidInputError(
            f"{where} data must be a list of strings, got {type(data).__name__}"
        )
    nested = any(isinstance(item, list) for item in data)
    rows = len(shape) == 2 and len(data) == shape[0]
    if nested and rows and all(isinstance(row, list) and len(row) == 1 for row in data):
        return [row[0] for row in data]
    if nested:
        raise InvalidInputError(
            f"{where} data is nested but not as its shape {shape}: send a flat list of {count} "
            f"strings, or {shape[0]} lists of one string for shape [N, 1]"
        )
    if len(data) != count:
        raise InvalidInputError(
            f"{where} has shape {shape} ({count} elements) but its data holds {len(data)}"
        )
    return data


def _outputs(outputs: Any) -> tuple[str, ...]:
    """The requested output names, in the order asked; all of them when none are named."""
    if outputs is None:
        return tuple(OUTPUTS)
    if not isinstance(outputs, list):
        raise InvalidInputError(
            f'outputs must be a list of {{"name": ...}} objects, got {type(outputs).__name__}'
        )
    names: list[str] = []
    for i, output in enumerate(outputs):
        if not isinstance(output, dict):
            raise InvalidInputError(
                f'outputs[{i}] must be an object {{"name": ...}}, got {type(output).__name__}'
            )
        name = output.get("name")
        if not isinstance(name, str) or name not in OUTPUTS:
            raise InvalidInputError(
                f"unknown output {name!r} (outputs[{i}]): the model answers {', '.join(OUTPUTS)}"
            )
        _check_keys(output, ("name", "parameters"), "field", f"output {name!r}")
        parameters = _parameters(output.get("parameters"), f"output {name!r} parameters")
        _check_keys(parameters, OUTPUT_PARAMETERS, "parameter", f"output {name!r}")
        if name not in names:
            names.append(name)
    return tuple(names) or tuple(OUTPUTS)


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInputError(f"{where} must be an object, got {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(item, str | int | float | bool):
            raise InvalidInputError(f"{where}: {key!r} must be a string, number or boolean")
    return value


def _check_keys(obj: dict[str, Any], known: tuple[str, ...], what: str, where: str) -> None:
    unknown = sorted(set(obj) - set(known))
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        raise InvalidInputError(
            f"unknown {what}(s) {names} in {where}: it takes {', '.join(known)}"
        )


def infer_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    predictions: list[dict[str, Any]],
    parameters: dict[str, Any],
) -> dict[str, Any]:
    """The v2 inference response: the requested outputs, each of shape [N], in input order."""
    outputs = []
    for name in request.outputs:
        datatype, field = OUTPUTS[name]
        data = [p[field] for p in predictions]
        outputs.append({"name": name, "datatype": datatype, "shape": [len(data)], "data": data})
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        response["id"] = request.id
    return response | {"parameters": parameters, "outputs": outputs}
