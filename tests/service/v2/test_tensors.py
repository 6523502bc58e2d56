"""Reading v2 inference requests and writing v2 responses, without HTTP."""

from __future__ import annotations

import re
from typing import Any

import pytest

from service.errors import InvalidInputError, PayloadTooLargeError
from service.v2.tensors import InferRequest, infer_response, metadata_tensors, parse_infer


def request(data: Any = ("good", "bad"), shape: Any = None, **fields: Any) -> dict[str, Any]:
    data = list(data)
    tensor = {
        "name": "text",
        "shape": [len(data)] if shape is None else shape,
        "datatype": "BYTES",
        "data": data,
    }
    return {"inputs": [tensor], **fields}


def test_the_spec_example_shape_is_read_with_its_id_and_outputs() -> None:
    # the spec's example (id "42", one requested output), with this model's input and outputs
    body = request(["a gorgeous film", "a dull plot"], id="42", outputs=[{"name": "score"}])
    asked = parse_infer(body, max_texts=8)
    assert asked == InferRequest(["a gorgeous film", "a dull plot"], "42", ("score",), None)


@pytest.mark.parametrize(
    ("data", "shape"),
    [(["a", "b", "c"], [3]), (["a", "b", "c"], [3, 1]), ([["a"], ["b"], ["c"]], [3, 1])],
)
def test_flat_and_nested_data_give_the_same_texts(data: list[Any], shape: list[int]) -> None:
    assert parse_infer(request(data, shape), 8).texts == ["a", "b", "c"]


def test_defaults_all_outputs_no_id_and_the_user_id_parameter() -> None:
    asked = parse_infer(request(parameters={"user_id": "u-1", "binary_data_output": True}), 8)
    assert asked.outputs == ("label", "score", "prediction_id", "truncated")
    assert asked.id is None and asked.user_id == "u-1"
    repeated = [{"name": "label", "parameters": {"binary_data": True}}, {"name": "label"}]
    assert parse_infer(request(outputs=repeated), 8).outputs == ("label",)
    assert parse_infer(request(outputs=[]), 8).outputs == asked.outputs
    mlserver = request()
    mlserver["inputs"][0]["parameters"] = {"content_type": "str"}
    assert parse_infer(mlserver, 8).texts == ["good", "bad"]


def _with_input(**changes: Any) -> dict[str, Any]:
    body = request()
    body["inputs"][0].update(changes)
    return {"inputs": [{k: v for k, v in body["inputs"][0].items() if v is not None}]}


BAD = [
    ([1, 2], "the body must be a JSON object"),
    ({}, "inputs is required"),
    ({"inputs": [], "outputs": []}, "got 0 inputs"),
    ({"inputs": "good"}, "got str"),
    ({"inputs": [request()["inputs"][0]] * 2}, "got 2 inputs"),
    ({"inputs": ["good"]}, "inputs\\[0\\] must be a tensor object"),
    (_with_input(name="input0"), "unknown input 'input0'"),
    (_with_input(datatype="FP32"), "input 'text' must have datatype BYTES.*got 'FP32'"),
    (_with_input(datatype=None), "input 'text' has no 'datatype'"),
    (_with_input(data=None), "input 'text' has no 'data'"),
    (_with_input(shape=[3]), r"shape \[3\] \(3 elements\) but its data holds 2"),
    (_with_input(shape=[2, 2]), r"shape \[N\] or \[N, 1\].*got \[2, 2\]"),
    (_with_input(shape=[1, 1, 2]), r"shape \[N\] or \[N, 1\]"),
    (_with_input(shape=[-2]), r"shape \[N\] or \[N, 1\]"),
    (_with_input(shape=["2"]), r"shape \[N\] or \[N, 1\]"),
    (_with_input(shape=[0], data=[]), "holds no texts"),
    (_with_input(data=[["good", "bad"]]), "nested but not as its shape"),
    (_with_input(data="good"), "data must be a list of strings, got str"),
    (_with_input(data=["good", ""]), r"input 'text' data\[1\] is empty or whitespace"),
    (_with_input(data=["good", 3]), r"input 'text' data\[1\] must be a string, got int"),
    (_with_input(parameters={"binary_data_size": 12}), "binary tensor data extension is not"),
    (_with_input(parameters={"content_type": "np"}), "content_type must be 'str'"),
    (_with_input(extra=1), "unknown field\\(s\\) 'extra' in input 'text'"),
    (request(id=42), "id must be a string, got int"),
    (request(model_name="x"), "unknown field\\(s\\) 'model_name' in the inference request"),
    (request(parameters={"userid": "u"}), "unknown parameter\\(s\\) 'userid'.*user_id"),
    (request(parameters={"user_id": ""}), "user_id must be a non-empty string"),
    (request(parameters={"user_id": ["u"]}), "'user_id' must be a string, number or boolean"),
    (request(parameters=[1]), "parameters must be an object"),
    (request(outputs=[{"name": "probabilities"}]), "unknown output 'probabilities'.*label, score"),
    (request(outputs=["label"]), "outputs\\[0\\] must be an object .*got str"),
    (request(outputs={"name": "label"}), "outputs must be a list"),
    (
        request(outputs=[{"name": "label", "parameters": {"classification": 2}}]),
        "unknown parameter\\(s\\) 'classification' in output 'label'",
    ),
]


@pytest.mark.parametrize(("body", "message"), BAD)
def test_bad_requests_are_400_naming_the_problem(body: Any, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_infer(body, max_texts=8)


def test_too_many_texts_is_413_with_the_limit() -> None:
    with pytest.raises(
        PayloadTooLargeError,
        match=re.escape("input 'text' data holds 9 items; at most 8 per request"),
    ):
        parse_infer(request(["x"] * 9), max_texts=8)


def test_the_response_has_the_requested_outputs_of_shape_n_in_input_order() -> None:
    predictions = [
        {"prediction_id": "p1", "label": "positive", "score": 0.9, "truncated": False},
        {"prediction_id": "p2", "label": "negative", "score": 0.75, "truncated": True},
    ]
    asked = InferRequest(["a", "b"], "42", ("score", "label"), None)
    response = infer_response("tuneserve", "run@abc", asked, predictions, {"variant": "tuned"})
    assert response == {
        "model_name": "tuneserve",
        "model_version": "run@abc",
        "id": "42",
        "parameters": {"variant": "tuned"},
        "outputs": [
            {"name": "score", "datatype": "FP32", "shape": [2], "data": [0.9, 0.75]},
            {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["positive", "negative"]},
        ],
    }
    no_id = infer_response(
        "m", "v", InferRequest(["a"], None, ("truncated",), None), predictions[1:], {}
    )
    assert "id" not in no_id and no_id["outputs"][0]["data"] == [True]


def test_the_metadata_tensors() -> None:
    tensors = metadata_tensors()
    assert tensors["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [(t["name"], t["datatype"], t["shape"]) for t in tensors["outputs"]] == [
        ("label", "BYTES", [-1]),
        ("score", "FP32", [-1]),
        ("prediction_id", "BYTES", [-1]),
        ("truncated", "BOOL", [-1]),
    ]
