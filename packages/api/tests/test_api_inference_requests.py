"""Request builders of ``nanoforge.api.inference_client``: tools, tool_choice and adapter requests become the
right proto fields, and bad values fail before anything is sent."""

from __future__ import annotations

import json

import pytest

from nanoforge.api.common.v1 import common_pb2
from nanoforge.api.inference.v1 import inference_pb2
from nanoforge.api.inference_client import (
    adapter_load_request,
    generate_request,
    tool_choice_message,
    tool_definition,
)

TOOL = {
    "type": "function",
    "function": {"name": "add", "description": "add", "parameters": {"type": "object", "properties": {}}},
}
MSGS = [{"role": "user", "content": "hi"}]


def test_tool_choice_modes_and_named_function() -> None:
    assert tool_choice_message(None) is None
    assert tool_choice_message("none").mode == common_pb2.TOOL_CHOICE_MODE_NONE
    assert tool_choice_message("auto").mode == common_pb2.TOOL_CHOICE_MODE_AUTO
    assert tool_choice_message("required").mode == common_pb2.TOOL_CHOICE_MODE_REQUIRED
    named = tool_choice_message({"type": "function", "function": {"name": "add"}})
    assert named.WhichOneof("choice") == "function_name" and named.function_name == "add"
    with pytest.raises(ValueError, match="bad tool_choice 'any'"):
        tool_choice_message("any")
    with pytest.raises(ValueError, match="bad tool_choice"):
        tool_choice_message({"type": "function"})


def test_generate_request_carries_tools_and_tool_choice_on_the_wire() -> None:
    req = generate_request(MSGS, tools=[TOOL], tool_choice="required")
    assert [t.name for t in req.tools] == ["add"]
    assert json.loads(req.tools[0].parameters_json_schema) == TOOL["function"]["parameters"]
    assert req.tool_choice.mode == common_pb2.TOOL_CHOICE_MODE_REQUIRED
    # GenerateStreamRequest shares the field numbers: the choice survives the byte-level conversion.
    stream = inference_pb2.GenerateStreamRequest.FromString(req.SerializeToString())
    assert stream.tool_choice.mode == common_pb2.TOOL_CHOICE_MODE_REQUIRED
    assert not generate_request(MSGS).HasField("tool_choice")  # unset: the server's auto
    proto_tool = common_pb2.ToolDefinition(name="x")
    assert tool_definition(proto_tool) is proto_tool
    assert tool_definition({"name": "f"}).parameters_json_schema == ""  # inner function dict accepted
    with pytest.raises(ValueError, match="needs a function name"):
        tool_definition({"type": "function", "function": {}})


def test_adapter_load_request() -> None:
    req = adapter_load_request("sql", "/models/lora", replace=True)
    assert (req.name, req.path, req.replace, req.model) == ("sql", "/models/lora", True, "")
    with pytest.raises(ValueError, match="adapter name is empty"):
        adapter_load_request("", "/x")
