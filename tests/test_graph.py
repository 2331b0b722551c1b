"""Tests for the headless runner (headless/): validation by ComfyUI 0.8.0's rules, execution, overrides and
UI -> API conversion; and for the authoring layout (tools/layout.py, tools/workflow_meta.py): API -> UI."""
import importlib
import importlib.machinery
import importlib.util
import json
import sys

import pytest
import torch

from conftest import ROOT


def _runner_package(name="talkinghead_runner"):
    """The pack folder as a package, as run.py loads it (headless/ and tools/ import core/ relatively), but
    without running the pack's __init__, which registers every node: these tests bring their own classes."""
    if name not in sys.modules:
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(ROOT)]
        sys.modules[name] = importlib.util.module_from_spec(spec)
    return name


PACKAGE = _runner_package()
headless = importlib.import_module(f"{PACKAGE}.headless")
layout = importlib.import_module(f"{PACKAGE}.tools.layout")
workflow_meta = importlib.import_module(f"{PACKAGE}.tools.workflow_meta")
_errors = importlib.import_module(f"{PACKAGE}.core.errors")
Cancelled, InputError, TalkingHeadError = _errors.Cancelled, _errors.InputError, _errors.TalkingHeadError


# --------------------------------------------------------------------------- fake node classes


class AnyType(str):
    """The wildcard socket type node packs use: equal to every type under ``!=``."""

    def __ne__(self, other):
        return False

    __hash__ = str.__hash__


ANY = AnyType("*")


class Const:
    """Produces an INT; records every call."""

    calls = []

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 1, "min": -100, "max": 100})}}

    RETURN_TYPES = ("INT",)
    OUTPUT_IS_LIST = (False,)  # declared but not a list output: runs normally
    FUNCTION = "run"

    def run(self, value):
        Const.calls.append(value)
        return (value,)


class Add:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("INT", {"forceInput": True}), "b": ("INT", {"forceInput": True})},
                "optional": {"c": ("INT", {"forceInput": True})}}

    RETURN_TYPES = ("INT",)
    RETURN_NAMES = ("sum",)
    FUNCTION = "add"

    def add(self, a, b, c=0):
        return (a + b + c,)


class Record:
    """Output node: records what it receives and returns it as ui."""

    seen = []

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": (ANY,)}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    def run(self, value):
        Record.seen.append(value)
        return {"ui": {"value": [value]}}


class Boom:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"forceInput": True})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value):
        raise ValueError("bad thing")


class NoFace(InputError):
    pass


class UserBoom(Boom):
    def run(self, value):
        raise NoFace("no face found in the image")


class Interrupt(Boom):
    def run(self, value):
        raise KeyboardInterrupt


class Cancel(Boom):
    def run(self, value):
        raise Cancelled("stop")


class Widgets:
    """Echoes its widget values; has every widget type and an optional combo."""

    DISPLAY_NAME = "All Widgets"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"size": ("INT", {"default": 256, "min": 8, "max": 4096}),
                             "scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0}),
                             "mode": (["pad", "crop"], {"default": "pad"}),
                             "flag": ("BOOLEAN", {"default": False}),
                             "text": ("STRING", {"default": ""})},
                "optional": {"fit": (["none", "fill"],)}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"

    def run(self, **kwargs):
        return (kwargs,)


class NeedsText:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"multiline": True})}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"

    def run(self, text):
        return (text,)


class MakeImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    def run(self):
        return (torch.zeros(1, 4, 4, 3),)


class TakeAudio:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"audio": ("AUDIO",)}}

    RETURN_TYPES = ("AUDIO",)
    FUNCTION = "run"

    def run(self, audio):
        return (audio,)


class Checked:
    """VALIDATE_INPUTS checks 'path' itself (so the combo check is skipped for it)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"path": (["a.wav", "b.wav"],), "gain": ("FLOAT", {"default": 1.0, "max": 2.0})}}

    @classmethod
    def VALIDATE_INPUTS(cls, path):
        return True if path.endswith(".wav") else f"not a wav file: {path}"

    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"

    def run(self, path, gain):
        return (f"{path}@{gain}",)


class LoadPicture:
    """Upload combo plus a widget after it."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": (["a.png", "b.png"], {"image_upload": True}),
                             "strength": ("FLOAT", {"default": 0.5})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    def run(self, image, strength):
        return (image,)


class Sampler:
    """A seed widget (gets a control value in the UI) between two other widgets."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "seed": ("INT", {"default": 0, "min": 0}),
                             "steps": ("INT", {"default": 20, "control_after_generate": False}),
                             "jitter": ("INT", {"default": 0, "control_after_generate": True}),
                             "label": ("STRING", {"default": "x"})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    def run(self, image, seed, steps, jitter, label):
        return (image,)


class SaveImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "prefix": ("STRING", {"default": "out"})},
                "optional": {"audio": ("AUDIO",)}}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True

    def save(self, images, prefix, audio=None):
        return {"ui": {"images": [prefix]}}


class Hidden:
    seen = []

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}, "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT",
                                           "extra_pnginfo": "EXTRA_PNGINFO", "dynprompt": "DYNPROMPT"}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    def run(self, unique_id, prompt, extra_pnginfo, dynprompt):
        Hidden.seen.append((unique_id, prompt, extra_pnginfo, dynprompt, torch.is_inference_mode_enabled()))
        return {}


class ListIn:
    INPUT_IS_LIST = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"forceInput": True})}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    def run(self, value):
        return {}


class Pair:
    """Declares two outputs but returns one."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("INT", "INT")
    FUNCTION = "run"

    def run(self):
        return (1,)


class Values:
    """Takes a list literal."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"items": (ANY,)}}

    RETURN_TYPES = (ANY,)
    FUNCTION = "run"

    def run(self, items):
        return (items,)


REGISTRY = {c.__name__: c for c in (Const, Add, Record, Boom, UserBoom, Interrupt, Cancel, Widgets, NeedsText,
                                    MakeImage, TakeAudio, Checked, LoadPicture, Sampler, SaveImage, Hidden,
                                    ListIn, Pair, Values)}


@pytest.fixture(autouse=True)
def _reset_records():
    Const.calls.clear()
    Record.seen.clear()
    Hidden.seen.clear()


def node(class_type, title=None, **inputs):
    """An API-format node."""
    data = {"class_type": class_type, "inputs": inputs}
    if title is not None:
        data["_meta"] = {"title": title}
    return data


def adder_prompt():
    return {
        "1": node("Const", "One", value=1),
        "2": node("Const", "Two", value=2),
        "3": node("Add", a=["1", 0], b=["2", 0]),
        "4": node("Record", "Show", value=["3", 0]),
        "5": node("Const", "Unused", value=7),
    }


def problems_of(prompt, registry=REGISTRY):
    with pytest.raises(headless.GraphError) as info:
        headless.validate(prompt, registry)
    return info.value


# --------------------------------------------------------------------------- execution


def test_execute_order_once_and_only_upstream_of_outputs():
    prompt = adder_prompt()
    prompt["6"] = node("Record", value=["3", 0])  # a second consumer: node 3 still runs once
    seen = []
    progress = []
    out = headless.execute(prompt, REGISTRY, on_node=lambda *a: seen.append(a),
                        progress=lambda done, total: progress.append((done, total)))
    assert out["order"] == ["1", "2", "3", "4", "6"]
    assert sorted(Const.calls) == [1, 2]  # node 5 is not upstream of an output
    assert Record.seen == [3, 3]
    assert out["results"]["3"] == (3,)
    assert out["outputs"] == {"4": {"value": [3]}, "6": {"value": [3]}}
    assert seen[0] == ("1", "Const", "One", 1, 5)
    assert seen[2] == ("3", "Add", "Add", 3, 5)
    assert progress[-1] == (5, 5)


def test_execute_dependency_order_ignores_prompt_order():
    prompt = {"9": node("Record", value=["7", 0]), "7": node("Add", a=["8", 0], b=["8", 0]),
              "8": node("Const", value=4)}
    assert headless.execute(prompt, REGISTRY)["order"] == ["8", "7", "9"]
    assert Record.seen == [8]


def test_hidden_inputs_and_inference_mode():
    prompt = {"12": node("Hidden")}
    headless.execute(prompt, REGISTRY, extra_pnginfo={"workflow": {"nodes": []}})
    unique_id, given_prompt, pnginfo, dynprompt, inference = Hidden.seen[0]
    assert unique_id == "12" and given_prompt is prompt
    assert pnginfo == {"workflow": {"nodes": []}} and dynprompt is None and inference
    headless.execute(prompt, REGISTRY)
    assert Hidden.seen[1][2] == {}


def test_optional_inputs_and_defaults_filled():
    prompt = {"1": node("Const", value=2), "2": node("Add", a=["1", 0], b=["1", 0], c=["1", 0]),
              "3": node("Record", value=["2", 0]), "4": node("Widgets", size=64), "5": node("Record", value=["4", 0])}
    out = headless.execute(prompt, REGISTRY)
    assert out["results"]["2"] == (6,)
    # missing required widgets get their defaults; the missing optional combo is not passed
    assert Record.seen[1] == {"size": 64, "scale": 1.0, "mode": "pad", "flag": False, "text": ""}


def test_literal_coercion_and_value_unwrapping():
    prompt = {"1": node("Widgets", size="16", scale="0.5", flag="true", text=3, fit="fill"),
              "2": node("Record", value=["1", 0]),
              "3": node("Values", items={"__value__": [1, 2, 3]}), "4": node("Record", value=["3", 0])}
    headless.execute(prompt, REGISTRY)
    assert Record.seen[0] == {"size": 16, "scale": 0.5, "mode": "pad", "flag": True, "text": "3", "fit": "fill"}
    assert Record.seen[1] == [1, 2, 3]


def test_node_error_is_wrapped_with_node_and_cause():
    prompt = {"1": node("Const", value=1), "2": node("Boom", "Exploder", value=["1", 0]),
              "3": node("Record", value=["2", 0])}
    with pytest.raises(headless.GraphError) as info:
        headless.execute(prompt, REGISTRY)
    err = info.value
    assert str(err) == 'node 2 (Boom "Exploder"): ValueError: bad thing'
    assert (err.node_id, err.class_type, err.title) == ("2", "Boom", "Exploder")
    assert isinstance(err.__cause__, ValueError)


def test_talkinghead_error_keeps_its_message():
    prompt = {"1": node("Const", value=1), "2": node("UserBoom", value=["1", 0]),
              "3": node("Record", value=["2", 0])}
    with pytest.raises(headless.GraphError) as info:
        headless.execute(prompt, REGISTRY)
    assert str(info.value) == "node 2 (UserBoom): no face found in the image"
    assert isinstance(info.value.__cause__, NoFace)


@pytest.mark.parametrize("class_type", ["Interrupt", "Cancel"])
def test_interrupt_and_cancel_raise_cancelled(class_type):
    prompt = {"1": node("Const", value=1), "2": node(class_type, value=["1", 0]),
              "3": node("Record", value=["2", 0])}
    with pytest.raises(Cancelled) as info:
        headless.execute(prompt, REGISTRY)
    assert not isinstance(info.value, headless.GraphError)
    assert Record.seen == []


def test_cancel_from_progress_callback():
    def progress(done, total):
        raise KeyboardInterrupt

    with pytest.raises(Cancelled, match="node 1"):
        headless.execute(adder_prompt(), REGISTRY, progress=progress)


def test_wrong_result_count_and_short_result():
    prompt = {"1": node("Pair"), "2": node("Record", value=["1", 1])}
    with pytest.raises(headless.GraphError, match=r"node 1 \(Pair\): returned 1 value\(s\) but RETURN_TYPES declares 2"):
        headless.execute(prompt, REGISTRY)


def test_list_execution_is_rejected():
    prompt = {"1": node("Const", value=1), "2": node("ListIn", value=["1", 0])}
    err = problems_of(prompt)
    assert "node 2 (ListIn)" in str(err) and "does not support" in str(err)


# --------------------------------------------------------------------------- validation


def test_unknown_class_type():
    err = problems_of({"1": node("Nope"), "2": node("Hidden")})
    assert err.node_id == "1" and err.class_type == "Nope"
    assert "unknown node type 'Nope'" in str(err) and "missing" in str(err)


def test_no_output_node():
    err = problems_of({"1": node("Const", value=1)})
    assert "no output node" in str(err) and "prompt_no_outputs" in str(err)


def test_link_to_missing_node_and_bad_index():
    err = problems_of({"1": node("Const", value=1), "2": node("Add", a=["9", 0], b=["1", 3]),
                       "3": node("Record", value=["2", 0])})
    text = str(err)
    assert "2 problems" in text and err.node_id is None
    assert "node 2 (Add): input 'a' is linked to node 9, which is not in the workflow" in text
    assert "input 'b' is linked to output 3 of node 1 (Const), which has 1 output(s)" in text
    assert [p.node_id for p in err.problems] == ["2", "2"]


def test_link_type_mismatch():
    err = problems_of({"1": node("MakeImage"), "2": node("TakeAudio", audio=["1", 0]),
                       "3": node("Record", value=["2", 0])})
    assert "node 2 (TakeAudio): input 'audio' expects AUDIO but is linked to output 0 (IMAGE) of node 1" in str(err)


# --------------------------------------------------------------------------- ComfyUI 0.8.0's rules
# comfy_execution/validation.py validate_node_input and execution.py validate_inputs: a graph is accepted or
# refused here exactly where ComfyUI's /prompt accepts or refuses it (module docstring of headless.validation
# for the deliberate differences, none of which is about links).


def passes(node_class, inputs, sources=None, registry=None):
    """``node_class`` as node 2 with ``inputs``, fed by ``sources`` ({id: node}) and feeding an output node:
    True when the prompt validates, else the error text."""
    reg = {**REGISTRY, **(registry or {}), node_class.__name__: node_class}
    prompt = {**(sources or {}), "2": node(node_class.__name__, **inputs), "9": node("Record", value=["2", 0])}
    try:
        headless.validate(prompt, reg)
    except headless.GraphError as exc:
        return str(exc)
    return True


def source(*types):
    """A class with the given RETURN_TYPES and no inputs."""
    return type("Source", (), {"INPUT_TYPES": classmethod(lambda cls: {"required": {}}), "RETURN_TYPES": types,
                               "FUNCTION": "run", "run": lambda self: tuple(None for _ in types)})


def sink(input_type, options=None, output_type=ANY):
    """A class with one required input ``x`` of ``input_type``, passing it on as ``output_type``."""
    declared = (input_type, options) if options is not None else (input_type,)
    return type("Sink", (), {"INPUT_TYPES": classmethod(lambda cls: {"required": {"x": declared}}),
                             "RETURN_TYPES": (output_type,), "FUNCTION": "run", "run": lambda self, x: (x,)})


def linked(output_type, input_type, options=None):
    """Whether a prompt with one link from an output of ``output_type`` into an input of ``input_type``
    validates (True) or the error text."""
    return passes(sink(input_type, options), {"x": ["1", 0]}, {"1": node("Source")}, {"Source": source(output_type)})


PLAIN_STAR = "*"
OPTIONS = ["pad", "crop"]


@pytest.mark.parametrize("output_type, input_type, accepted", [
    ("IMAGE", "IMAGE", True),
    ("IMAGE", "AUDIO", False),
    (ANY, "IMAGE", True),                       # 1. __ne__ overridden, on the output side
    ("IMAGE", ANY, True),                       # ... and on the input side (reflected __ne__)
    (PLAIN_STAR, "IMAGE", True),                # 2. a plain "*" output
    ("AUDIO", PLAIN_STAR, True),                # ... and a plain "*" input
    ("COMFY_MATCHTYPE_V3", "IMAGE", True),      # 3. V3 MatchType, left to the frontend
    ("LATENT", "COMFY_MATCHTYPE_V3", True),
    (OPTIONS, "COMBO", True),                   # 4. a list of options as the output type, into COMBO
    (["other"], "COMBO", True),                 # ... whatever the options
    (OPTIONS, "STRING", False),                 # ... but not into anything else
    (OPTIONS, list(OPTIONS), True),             # an old-style combo (its choices as the type): the same list
    (OPTIONS, ["pad"], False),                  # ... and only the same list
    ("COMBO", list(OPTIONS), False),
    ("STRING", list(OPTIONS), False),
    ("STRING,INT", "INT", True),                # 5. unions: any overlap (not strict)
    ("INT", "STRING,INT", True),
    ("STRING,BOOLEAN", "STRING,INT", True),
    ("STRING, INT", "FLOAT ,INT", True),        # blanks around the names do not count
    ("STRING,BOOLEAN", "INT,FLOAT", False),
    ("IMAGE,*", "AUDIO", True),                 # a "*" inside a union
    ("AUDIO", "MASK,*", True),
    ("IMAGE,MASK", "IMAGEMASK", False),
    (None, "IMAGE", False),                     # neither equal nor strings
])
def test_link_accepted_follows_comfyui(output_type, input_type, accepted):
    assert headless.link_accepted(output_type, input_type) is accepted


def test_link_rules_in_validation():
    """The same rules where they matter: validate() accepts and refuses those links, with the types named."""
    assert linked(PLAIN_STAR, "INT") is True and linked("INT", PLAIN_STAR) is True
    assert linked(ANY, "AUDIO") is True and linked("AUDIO", ANY) is True
    assert linked(OPTIONS, "COMBO", {"options": OPTIONS}) is True
    assert linked("STRING,INT", "INT") is True
    assert linked("STRING,BOOLEAN", "INT,FLOAT") == ("node 2 (Sink): input 'x' expects INT,FLOAT but is linked to "
                                                     "output 0 (STRING,BOOLEAN) of node 1 (Source)")
    assert "input 'x' expects STRING but is linked to output 0 (COMBO)" in linked(OPTIONS, "STRING")
    assert "input 'x' expects COMBO but is linked to output 0 (COMBO)" in linked(OPTIONS, ["pad"])
    # the wildcard classes of this file and a plain "*" through a whole graph (and it runs)
    reg = {**REGISTRY, "Star": sink(PLAIN_STAR, output_type=PLAIN_STAR)}
    prompt = {"1": node("Const", value=3), "2": node("Star", x=["1", 0]), "3": node("Add", a=["2", 0], b=4),
              "4": node("Record", value=["3", 0]), "5": node("Values", items=5),
              "6": node("Add", a=["5", 0], b=["1", 0]), "7": node("Record", value=["6", 0])}
    results = headless.execute(prompt, reg)["results"]
    assert (results["3"], results["6"]) == ((7,), (8,))
    # a combo still does not take a STRING (or INT) link
    prompt = {"1": node("NeedsText", text="crop"), "2": node("Widgets", mode=["1", 0]),
              "3": node("Record", value=["2", 0])}
    assert "input 'mode' expects COMBO but is linked to output 0 (STRING)" in str(problems_of(prompt))


class Zoom:
    """Returns a value outside the choices of the combo its output type names."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = (list(OPTIONS),)
    FUNCTION = "run"

    def run(self):
        return ("zoom",)


def test_linked_values_skip_min_max_and_choices():
    """ComfyUI checks min/max and combo choices on literals only: a linked value outside them validates and
    arrives as it is."""
    reg = {**REGISTRY, "Zoom": Zoom}
    prompt = {"1": node("Add", a=["3", 0], b=["3", 0]), "3": node("Const", value=2), "5": node("Zoom"),
              "2": node("Widgets", size=["1", 0], mode=["5", 0]), "4": node("Record", value=["2", 0])}
    values = headless.execute(prompt, reg)["results"]["2"][0]
    assert (values["size"], values["mode"]) == (4, "zoom")  # min is 8; the choices are pad, crop
    prompt["2"]["inputs"].update(size=4, mode="zoom")
    err = problems_of(prompt, reg)
    assert "input 'size' = 4 is below the minimum 8" in str(err) and "input 'mode' = 'zoom' is not one" in str(err)


class TypesChecked:
    """Asks for ``input_types``: the link type check is off for every input of the node."""

    seen = []

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"audio": ("AUDIO",), "count": ("INT", {"default": 1, "max": 5})}}

    @classmethod
    def VALIDATE_INPUTS(cls, input_types, audio):
        cls.seen.append((dict(input_types), audio))
        return True if input_types.get("audio") in ("AUDIO", "IMAGE") else f"no sound from {input_types}"

    RETURN_TYPES = ("AUDIO",)
    FUNCTION = "run"

    def run(self, audio, count):
        return (audio,)


def test_input_types_turns_the_type_check_off():
    TypesChecked.seen.clear()
    assert passes(TypesChecked, {"audio": ["1", 0]}, {"1": node("MakeImage")}) is True
    assert TypesChecked.seen == [({"audio": "IMAGE"}, None)]  # the linking output's type; None for the value
    assert passes(TypesChecked, {"audio": ["1", 0]}, {"1": node("Const", value=1)}) == \
        "node 2 (TypesChecked): no sound from {'audio': 'INT'}"
    # the literal checks of the inputs it does not name still apply
    assert "input 'count' = 9 is above the maximum 5" in passes(TypesChecked, {"audio": ["1", 0], "count": 9},
                                                                {"1": node("MakeImage")})


class KwargsChecked:
    """VALIDATE_INPUTS with **kwargs: it owns every input's limits and choices, and gets every input."""

    seen = []

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"size": ("INT", {"default": 8, "min": 8, "max": 16}), "mode": (OPTIONS,),
                             "image": ("IMAGE",)},
                "hidden": {"node": "UNIQUE_ID", "prompt": "PROMPT", "extra": "EXTRA_PNGINFO"}}

    @classmethod
    def VALIDATE_INPUTS(cls, **kwargs):
        cls.seen.append(kwargs)
        return True

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    def run(self, size, mode, image, node=None, prompt=None, extra=None):
        return (image,)


def test_kwargs_validator_owns_every_limit():
    KwargsChecked.seen.clear()
    assert passes(KwargsChecked, {"size": 99, "mode": "zoom", "image": ["1", 0]}, {"1": node("MakeImage")}) is True
    assert KwargsChecked.seen == [{"size": 99, "mode": "zoom", "image": None, "node": "2", "prompt": {},
                                   "extra": None}]
    # values are still converted to the declared type first
    assert "input 'size' expects an integer (INT), got 'big'" in passes(
        KwargsChecked, {"size": "big", "mode": "pad", "image": ["1", 0]}, {"1": node("MakeImage")})


class DefaultChecked:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": "x"})}, "optional": {"extra": ("STRING", {})}}

    @classmethod
    def VALIDATE_INPUTS(cls, text="its own default"):
        return True if text is None else f"text is {text!r}"

    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"

    def run(self, text, extra=None):
        return (text,)


class NeedsOptional(DefaultChecked):
    @classmethod
    def VALIDATE_INPUTS(cls, text, extra):
        return True


def test_validator_arguments_as_comfyui_passes_them():
    # a linked input arrives as None, even where the function has a default
    assert passes(DefaultChecked, {"text": ["1", 0]}, {"1": node("NeedsText", text="a")}) is True
    assert passes(DefaultChecked, {"text": "b"}) == "node 2 (DefaultChecked): text is 'b'"
    # an input it names that the prompt does not give is not passed: a required parameter is an error
    message = passes(NeedsOptional, {"text": "b"})
    assert message.startswith("node 2 (NeedsOptional): VALIDATE_INPUTS failed: TypeError:") and "'extra'" in message
    assert passes(NeedsOptional, {"text": "b", "extra": "c"}) is True


class SaysFalse(NeedsText):
    @classmethod
    def VALIDATE_INPUTS(cls, text):
        return False


class NoParameters(NeedsText):
    @staticmethod
    def VALIDATE_INPUTS():
        raise AssertionError("ComfyUI does not call a VALIDATE_INPUTS without parameters")


def test_validator_verdicts():
    assert passes(SaysFalse, {"text": "a"}) == "node 2 (SaysFalse): VALIDATE_INPUTS returned False"
    assert passes(NoParameters, {"text": "a"}) is True


class TruthyOutput(SaveImage):
    OUTPUT_NODE = 1


def test_output_node_means_the_value_true():
    """ComfyUI runs from classes whose OUTPUT_NODE *is* True."""
    reg = {**REGISTRY, "TruthyOutput": TruthyOutput}
    err = problems_of({"1": node("MakeImage"), "2": node("TruthyOutput", images=["1", 0])}, reg)
    assert "no output node" in str(err)


def test_missing_required_input():
    err = problems_of({"1": node("Const", value=1), "2": node("Add", a=["1", 0]), "3": node("Record", value=["2", 0])})
    assert str(err) == "node 2 (Add): required input 'b' (INT) is missing"


def test_missing_widget_without_default_is_an_error():
    err = problems_of({"1": node("NeedsText"), "2": node("Record", value=["1", 0])})
    assert "required input 'text' (STRING) is missing" in str(err)


@pytest.mark.parametrize("inputs, expected", [
    ({"size": 4}, "input 'size' = 4 is below the minimum 8"),
    ({"size": 5000}, "input 'size' = 5000 is above the maximum 4096"),
    ({"scale": 2.5}, "input 'scale' = 2.5 is above the maximum 2.0"),
    ({"mode": "zoom"}, "input 'mode' = 'zoom' is not one of the allowed values: 'pad', 'crop'"),
    ({"size": "big"}, "input 'size' expects an integer (INT), got 'big'"),
    ({"size": 2.5}, "input 'size' expects an integer (INT), got 2.5"),
    ({"scale": "x"}, "input 'scale' expects a number (FLOAT), got 'x'"),
    ({"flag": "maybe"}, "input 'flag' expects true or false (BOOLEAN), got 'maybe'"),
    ({"text": {"a": 1}}, "input 'text' expects a string (STRING), got {'a': 1}"),
])
def test_bad_literals(inputs, expected):
    err = problems_of({"7": node("Widgets", "Cfg", **inputs), "8": node("Record", value=["7", 0])})
    assert str(err) == f'node 7 (Widgets "Cfg"): {expected}'


def test_literal_for_socket_input_and_malformed_link():
    err = problems_of({"1": node("TakeAudio", audio="a.wav"), "2": node("Record", value=["1", 0]),
                       "3": node("Record", value=["1", 0, 1])})
    text = str(err)
    assert "input 'audio' (AUDIO) must be linked to another node's output, got the literal 'a.wav'" in text
    assert "is not a link [node_id, output_index]" in text


def test_all_problems_are_collected():
    err = problems_of({"1": node("Widgets", size=1, mode="zoom"), "2": node("Record", value=["1", 0]),
                       "3": node("Nope")})
    assert len(err.problems) == 3
    assert {p.node_id for p in err.problems} == {"1", "3"}


def test_nodes_not_upstream_of_outputs_are_not_checked():
    prompt = adder_prompt()
    prompt["5"] = node("Const", value=1000)  # out of range, but never runs
    headless.validate(prompt, REGISTRY)


def test_validate_inputs_custom_check():
    prompt = {"1": node("Checked", path="c.wav", gain=1.5), "2": node("Record", value=["1", 0])}
    headless.validate(prompt, REGISTRY)  # not in the combo list, but VALIDATE_INPUTS owns 'path'
    assert headless.execute(prompt, REGISTRY)["results"]["1"] == ("c.wav@1.5",)
    prompt["1"]["inputs"]["path"] = "c.mp3"
    assert str(problems_of(prompt)) == "node 1 (Checked): not a wav file: c.mp3"
    prompt["1"]["inputs"].update(path="a.wav", gain=3.0)  # built-in checks still apply to 'gain'
    assert "input 'gain' = 3.0 is above the maximum 2.0" in str(problems_of(prompt))


def test_cycle_is_detected():
    prompt = {"1": node("Add", a=["2", 0], b=["3", 0]), "2": node("Add", a=["1", 0], b=["3", 0]),
              "3": node("Const", value=1), "4": node("Record", value=["1", 0])}
    err = problems_of(prompt)
    assert "dependency cycle" in str(err) and "nodes 1, 2 " in str(err)
    with pytest.raises(headless.GraphError, match="cycle"):
        headless.execute(prompt, REGISTRY)


def test_graph_error_is_a_talkinghead_error():
    assert issubclass(headless.GraphError, TalkingHeadError)
    err = headless.GraphError("boom", node_id=3, class_type="TalkingHead_MuxVideo", title="Save")
    assert str(err) == 'node 3 (TalkingHead_MuxVideo "Save"): boom'
    assert err.node_id == "3"


# --------------------------------------------------------------------------- overrides


def test_overrides_by_id_title_and_class_type():
    prompt = adder_prompt()
    prompt["4"]["_meta"]["title"] = "Show.me v1.2"
    prompt["7"] = node("Widgets", size=64, text="a")
    prompt["8"] = node("Record", "Show Widgets", value=["7", 0])
    out = headless.apply_overrides(prompt, ["1.value=10", "Two.value=20", "Widgets.text=hello world",
                                         "Widgets.size=128", "Show.me v1.2.value=5"])
    assert out["1"]["inputs"]["value"] == 10
    assert out["2"]["inputs"]["value"] == 20
    assert out["7"]["inputs"]["text"] == "hello world" and out["7"]["inputs"]["size"] == 128
    assert out["4"]["inputs"]["value"] == 5  # a link replaced by a literal; dots in the title
    assert prompt["1"]["inputs"]["value"] == 1 and prompt["4"]["inputs"]["value"] == ["3", 0]  # deep copy


@pytest.mark.parametrize("value, expected", [
    ("3", 3), ("2.5", 2.5), ("false", False), ("null", None), ('"7"', "7"), ("plain text", "plain text"),
    ("", ""), ("a=b", "a=b"), ("[1, 2]", {"__value__": [1, 2]}),
])
def test_override_value_parsing(value, expected):
    out = headless.apply_overrides({"1": node("Widgets", text="x")}, [f"1.text={value}"])
    assert out["1"]["inputs"]["text"] == expected


def test_override_errors():
    prompt = adder_prompt()
    with pytest.raises(InputError, match="class_type 'Const' is ambiguous: it matches nodes 1, 2, 5"):
        headless.apply_overrides(prompt, ["Const.value=3"])
    prompt["2"]["_meta"]["title"] = "One"
    with pytest.raises(InputError, match="title 'One' is ambiguous: it matches nodes 1, 2"):
        headless.apply_overrides(prompt, ["One.value=3"])
    with pytest.raises(InputError, match="no node has the id, title or class_type 'Missing'"):
        headless.apply_overrides(prompt, ["Missing.value=3"])
    with pytest.raises(InputError, match=r"node 1 \(Const\) has no input 'size' \(inputs: value\)"):
        headless.apply_overrides(prompt, ["1.size=3"])
    with pytest.raises(InputError, match="not of the form NODE.INPUT=VALUE"):
        headless.apply_overrides(prompt, ["1value=3"])


def test_override_declared_input_with_registry():
    out = headless.apply_overrides({"1": node("Widgets")}, ["1.size=32"], registry=REGISTRY)
    assert out["1"]["inputs"] == {"size": 32}
    with pytest.raises(InputError, match="has no input 'bogus'"):
        headless.apply_overrides({"1": node("Widgets")}, ["1.bogus=1"], registry=REGISTRY)


# --------------------------------------------------------------------------- UI format


def ui_node(node_id, class_type, inputs=(), outputs=(), widgets=None, mode=0, title=None):
    data = {"id": node_id, "type": class_type, "mode": mode,
            "inputs": [dict(zip(("name", "type", "link"), i[:3]), **({"widget": {"name": i[0]}} if len(i) > 3 else {}))
                       for i in inputs],
            "outputs": [{"name": o[0], "type": o[1], "links": list(o[2])} for o in outputs]}
    if widgets is not None:
        data["widgets_values"] = widgets
    if title is not None:
        data["title"] = title
    return data


def test_ui_to_api_full_featured():
    workflow = {
        "nodes": [
            ui_node(1, "LoadPicture", outputs=[("IMAGE", "IMAGE", [1])], widgets=["b.png", 0.7, "image"],
                    title="Face"),
            ui_node(2, "Reroute", inputs=[("", "*", 1)], outputs=[("", "IMAGE", [2])]),
            ui_node(3, "Sampler", inputs=[("image", "IMAGE", 2)], outputs=[("IMAGE", "IMAGE", [3])],
                    widgets=[42, "randomize", 30, 5, "fixed", "lbl"]),
            ui_node(4, "Sampler", inputs=[("image", "IMAGE", 3)], outputs=[("IMAGE", "IMAGE", [4])],
                    widgets=[1, "fixed", 2, 3, "fixed", "z"], mode=4),
            ui_node(5, "SaveImage", inputs=[("images", "IMAGE", 4), ("audio", "AUDIO", 6),
                                           ("prefix", "STRING", 5, "widget")], widgets=["ignored"]),
            ui_node(6, "PrimitiveNode", outputs=[("STRING", "STRING", [5])], widgets=["clip", "fixed"]),
            ui_node(7, "TakeAudio", inputs=[("audio", "AUDIO", None)], outputs=[("AUDIO", "AUDIO", [6])], mode=2),
            ui_node(8, "Note", widgets=["a note"]),
            ui_node(9, "Widgets", widgets={"size": 64, "mode": "crop", "videopreview": {"x": 1}}),
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"], [3, 3, 0, 4, 0, "IMAGE"],
                  [4, 4, 0, 5, 0, "IMAGE"], [5, 6, 0, 5, 2, "STRING"], [6, 7, 0, 5, 1, "AUDIO"]],
    }
    api = headless.ui_to_api(workflow, REGISTRY)
    assert api == {
        "1": {"class_type": "LoadPicture", "inputs": {"image": "b.png", "strength": 0.7}, "_meta": {"title": "Face"}},
        "3": {"class_type": "Sampler", "_meta": {"title": "Sampler"},
              "inputs": {"image": ["1", 0], "seed": 42, "steps": 30, "jitter": 5, "label": "lbl"}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "prefix": "clip"},
              "_meta": {"title": "SaveImage"}},
        "9": {"class_type": "Widgets", "inputs": {"size": 64, "mode": "crop"}, "_meta": {"title": "All Widgets"}},
    }


def test_ui_upload_widget_values_trail_the_declared_widgets():
    """ComfyUI's frontend adds the upload button (and an audio player) after every declared widget:
    a node saved by the frontend reads back right, with or without those trailing values."""
    for saved in (["a.png", 0.25, "image"], ["a.png", 0.25]):
        workflow = {"nodes": [ui_node(1, "LoadPicture", widgets=saved)], "links": []}
        assert headless.ui_to_api(workflow, REGISTRY)["1"]["inputs"] == {"image": "a.png", "strength": 0.25}


def test_ui_seed_without_control_value_and_list_widget():
    workflow = {"nodes": [ui_node(1, "Sampler", widgets=[7, 8, 9, "fixed", "s"]),
                          ui_node(2, "Values", widgets=[[1, 2]])], "links": []}
    api = headless.ui_to_api(workflow, REGISTRY)
    assert api["1"]["inputs"] == {"seed": 7, "steps": 8, "jitter": 9, "label": "s"}
    assert api["2"]["inputs"] == {}  # '*' is a socket, not a widget
    workflow["nodes"][1] = ui_node(2, "Widgets", widgets=[1, 1.0, "pad", False, "t", "none"])
    assert headless.ui_to_api(workflow, REGISTRY)["2"]["inputs"]["fit"] == "none"


def test_ui_bypass_without_matching_input_drops_the_link():
    workflow = {"nodes": [ui_node(1, "MakeImage", outputs=[("IMAGE", "IMAGE", [1])]),
                          ui_node(2, "TakeAudio", inputs=[("audio", "AUDIO", None)],
                                  outputs=[("AUDIO", "AUDIO", [2])], mode=4),
                          ui_node(3, "SaveImage", inputs=[("images", "IMAGE", 1), ("audio", "AUDIO", 2)],
                                  widgets=["p"])],
                "links": [[1, 1, 0, 3, 0, "IMAGE"], [2, 2, 0, 3, 1, "AUDIO"]]}
    assert headless.ui_to_api(workflow, REGISTRY)["3"]["inputs"] == {"images": ["1", 0], "prefix": "p"}


def test_ui_links_as_objects():
    workflow = {"nodes": [ui_node(1, "MakeImage", outputs=[("IMAGE", "IMAGE", [1])]),
                          ui_node(2, "SaveImage", inputs=[("images", "IMAGE", 1)], widgets=["p"], title="Out")],
                "links": [{"id": 1, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0,
                           "type": "IMAGE"}]}
    assert headless.ui_to_api(workflow, REGISTRY)["2"] == {
        "class_type": "SaveImage", "inputs": {"images": ["1", 0], "prefix": "p"}, "_meta": {"title": "Out"}}


def test_ui_unknown_type():
    workflow = {"nodes": [ui_node(5, "Mystery")], "links": []}
    with pytest.raises(headless.GraphError, match="node 5 \\(Mystery\\): unknown node type 'Mystery'") as info:
        headless.ui_to_api(workflow, REGISTRY)
    assert info.value.node_id == "5"


def api_sample():
    return {
        "1": node("LoadPicture", "Face", image="b.png", strength=0.7),
        "2": node("Sampler", "Sample", image=["1", 0], seed=42, steps=30, jitter=3, label="l"),
        "3": node("NeedsText", "Prefix", text="clip"),
        "4": node("SaveImage", "Save", images=["2", 0], prefix=["3", 0]),
        "5": node("Widgets", "Cfg", size=64, scale=0.5, mode="crop", flag=True, text="t", fit="fill"),
        "6": node("Values", "Vals", items=["5", 0]),
        "7": node("Record", "Show", value=["6", 0]),
        "10": node("Const", "Ten", value=10),
    }


def test_api_to_ui_structure():
    ui = layout.api_to_ui(api_sample(), REGISTRY)
    assert ui["version"] == 0.4 and ui["extra"] == {} and ui["groups"] == []
    assert ui["last_node_id"] == 10 and ui["last_link_id"] == len(ui["links"]) == 5
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert nodes[1]["widgets_values"] == ["b.png", 0.7, "image"]
    assert nodes[2]["widgets_values"] == [42, "fixed", 30, 3, "fixed", "l"]
    assert nodes[4]["inputs"][1] == {"name": "prefix", "type": "STRING", "link": 3, "widget": {"name": "prefix"}}
    assert nodes[4]["inputs"][2] == {"name": "audio", "type": "AUDIO", "link": None}
    assert nodes[4]["widgets_values"] == ["out"]  # placeholder (default) for the linked widget
    assert nodes[2]["outputs"][0]["links"] == [2] and nodes[4]["title"] == "Save"
    assert [2, 2, 0, 4, 0, "IMAGE"] in ui["links"]
    assert nodes[1]["pos"][0] < nodes[2]["pos"][0] < nodes[4]["pos"][0]
    assert nodes[1]["pos"] != nodes[3]["pos"]  # same column, stacked
    assert all(len(n["size"]) == 2 for n in ui["nodes"])
    json.dumps(ui)


def test_api_to_ui_round_trip():
    prompt = api_sample()
    assert headless.ui_to_api(layout.api_to_ui(prompt, REGISTRY), REGISTRY) == prompt
    # exact when the prompt gives every widget (missing ones come back as their defaults)
    prompt = {"1": node("Values", "V", items=["2", 0]),
              "2": node("Widgets", "W", text="x", size=9, scale=1.0, mode="pad", flag=False)}
    assert headless.ui_to_api(layout.api_to_ui(prompt, REGISTRY), REGISTRY)["2"]["inputs"] == dict(
        prompt["2"]["inputs"], fit="none")
    prompt["2"]["inputs"]["fit"] = "fill"
    assert headless.ui_to_api(layout.api_to_ui(prompt, REGISTRY), REGISTRY) == prompt


def test_api_to_ui_list_literal_round_trip():
    prompt = {"1": node("Checked", "C", path={"__value__": ["a.wav"]}, gain=1.0)}
    ui = layout.api_to_ui(prompt, REGISTRY)
    assert ui["nodes"][0]["widgets_values"] == [["a.wav"], 1.0]
    assert headless.ui_to_api(ui, REGISTRY) == prompt


def test_api_to_ui_errors():
    with pytest.raises(headless.GraphError, match=r"input 'audio' \(AUDIO\) has a literal value"):
        layout.api_to_ui({"1": node("TakeAudio", audio="x.wav")}, REGISTRY)
    with pytest.raises(headless.GraphError, match="numeric node ids"):
        layout.api_to_ui({"a": node("Const", value=1)}, REGISTRY)
    with pytest.raises(headless.GraphError, match="cycle"):
        layout.api_to_ui({"1": node("Add", a=["2", 0], b=["2", 0]), "2": node("Add", a=["1", 0], b=["1", 0])},
                        REGISTRY)


def _box(ui_node):
    """The area a UI node takes on the canvas: its title bar is drawn above ``pos``."""
    x, y = ui_node["pos"]
    w, h = ui_node["size"]
    return x, y - 30, x + w, y + h


def _inside(box, bounding):
    gx, gy, gw, gh = bounding
    return gx <= box[0] and gy <= box[1] and box[2] <= gx + gw and box[3] <= gy + gh


def _overlap(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def meta_sample():
    return {
        "$comment": "comments are allowed",
        "groups": [{"title": "in", "nodes": [1, 3, 5, "10"], "color": "green"},
                   {"title": "work", "nodes": [2, 6], "color": "#123456", "font_size": 20},
                   {"title": "out", "nodes": [4, 7]}],
        "notes": [{"title": "About", "text": "what it does\n\n" + "word " * 200, "position": "top"},
                  {"text": "models", "position": "top", "width": 300},
                  {"text": "change this", "position": "group:in"},
                  {"text": "right", "position": "right"},
                  {"text": "left", "position": "left", "height": 90},
                  {"text": "below", "position": "bottom"}],
    }


def test_api_to_ui_groups_and_notes():
    prompt = api_sample()
    ui = layout.api_to_ui(prompt, REGISTRY, meta_sample())
    assert headless.ui_to_api(ui, REGISTRY) == prompt  # groups and notes change nothing
    nodes = {n["id"]: n for n in ui["nodes"]}
    notes = [n for n in ui["nodes"] if n["type"] == "Note"]
    assert [n["id"] for n in notes] == [11, 12, 13, 14, 15, 16] and ui["last_node_id"] == 16
    assert ui["last_link_id"] == len(ui["links"]) == 5
    about = nodes[11]
    assert about["title"] == "About" and about["widgets_values"][0].startswith("what it does")
    assert about["inputs"] == [] and about["outputs"] == [] and about["mode"] == 0
    assert (about["color"], about["bgcolor"]) == (layout.NOTE_COLOR, layout.NOTE_BGCOLOR)
    assert nodes[12]["title"] == "Note" and nodes[12]["size"][0] == 300
    assert about["size"][1] >= workflow_meta.note_height(about["widgets_values"][0], about["size"][0]) > 100
    assert nodes[15]["size"][1] == 90
    groups = {g["title"]: g for g in ui["groups"]}
    assert list(groups) == ["in", "work", "out"]
    assert groups["in"]["color"] == workflow_meta.GROUP_COLORS["green"] and groups["work"]["color"] == "#123456"
    assert groups["work"]["font_size"] == 20 and groups["out"]["font_size"] == 24
    members = {"in": [1, 3, 5, 10, 13], "work": [2, 6], "out": [4, 7]}
    for title, ids in members.items():
        bounding = groups[title]["bounding"]
        for node_id, ui_node in nodes.items():
            if node_id in ids:
                assert _inside(_box(ui_node), bounding), (title, node_id)
            else:  # the editor adopts a node whose centre is inside a group
                b = _box(ui_node)
                centre = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
                assert not _inside(centre + centre, bounding), (title, node_id)
    boxes = [_box(n) for n in ui["nodes"]]
    assert not [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if _overlap(a, b)]
    group_boxes = [(x, y, x + w, y + h) for x, y, w, h in (g["bounding"] for g in ui["groups"])]
    assert not any(_overlap(a, b) for i, a in enumerate(group_boxes) for b in group_boxes[i + 1:])
    # places: top row above everything else, left/right/bottom around the groups
    top = min(b[1] for b in group_boxes)
    assert _box(nodes[11])[3] < top and _box(nodes[12])[3] < top and _box(nodes[12])[0] > _box(nodes[11])[2]
    assert _box(nodes[14])[0] > max(b[2] for b in group_boxes)
    assert _box(nodes[15])[2] < min(b[0] for b in group_boxes)
    assert _box(nodes[16])[1] > max(b[3] for b in group_boxes)
    assert min(min(b[0] for b in boxes + group_boxes), min(b[1] for b in boxes + group_boxes)) == 50
    json.dumps(ui)


def test_api_to_ui_layout_columns_and_order():
    prompt = api_sample()
    ui = layout.api_to_ui(prompt, REGISTRY, {"columns": {"3": 2}})
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert nodes[3]["pos"][0] == nodes[4]["pos"][0] - 420  # its consumer moved right with it
    assert nodes[1]["pos"][0] < nodes[2]["pos"][0] < nodes[3]["pos"][0] < nodes[4]["pos"][0]
    assert headless.ui_to_api(ui, REGISTRY) == prompt
    # a column is ordered by where the sources are: fewer crossing links
    prompt = {"1": node("Const", "A", value=1), "2": node("Const", "B", value=2),
              "3": node("Add", "from B", a=["2", 0], b=["2", 0]), "4": node("Add", "from A", a=["1", 0], b=["1", 0])}
    nodes = {n["id"]: n for n in layout.api_to_ui(prompt, REGISTRY)["nodes"]}
    assert nodes[1]["pos"][1] < nodes[2]["pos"][1] and nodes[4]["pos"][1] < nodes[3]["pos"][1]
    boxes = [_box(n) for n in nodes.values()]
    assert not any(_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_api_to_ui_stacked_groups_share_no_rows():
    """Two groups over the same columns are stacked; a group in other columns starts at the top."""
    prompt = {"1": node("Const", "A", value=1), "2": node("Add", "A+", a=["1", 0], b=["1", 0]),
              "3": node("Const", "B", value=2), "4": node("Add", "B+", a=["3", 0], b=["3", 0]),
              "5": node("Add", "sum", a=["2", 0], b=["4", 0]), "6": node("Record", "show", value=["5", 0])}
    meta = {"groups": [{"title": "a", "nodes": [1, 2]}, {"title": "b", "nodes": [3, 4]},
                       {"title": "end", "nodes": [5, 6]}]}
    ui = layout.api_to_ui(prompt, REGISTRY, meta)
    g = {x["title"]: x["bounding"] for x in ui["groups"]}
    assert g["b"][1] >= g["a"][1] + g["a"][3] and g["end"][1] == g["a"][1]
    assert g["a"][0] == g["b"][0] and g["end"][0] >= g["a"][0] + g["a"][2]


def test_api_to_ui_explicit_positions():
    prompt = api_sample()
    meta = {"positions": {"10": [3000, 2000]}, "notes": [{"text": "x", "pos": [-500, -400], "id": 99}],
            "groups": [{"title": "far", "nodes": [10]}]}
    ui = layout.api_to_ui(prompt, REGISTRY, meta)
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert nodes[10]["pos"] == [3000, 2000] and nodes[99]["pos"] == [-500, -400] and ui["last_node_id"] == 99
    assert _inside(_box(nodes[10]), ui["groups"][0]["bounding"])
    assert headless.ui_to_api(ui, REGISTRY) == prompt


@pytest.mark.parametrize("meta, message", [
    ([], "must be a JSON object"),
    ({"group": []}, "unknown key 'group'"),
    ({"groups": [{"nodes": [1]}]}, "group 1 needs a 'title'"),
    ({"groups": [{"title": "a", "nodes": [42]}]}, "lists node 42, which is not in the workflow"),
    ({"groups": [{"title": "a", "nodes": [1]}, {"title": "b", "nodes": [1]}]}, "node 1 is in two groups"),
    ({"groups": [{"title": "a", "nodes": [1], "color": "mauve"}]}, "color 'mauve' is neither"),
    ({"groups": [{"title": "a"}, {"title": "a"}]}, "two groups are titled 'a'"),
    ({"notes": [{"title": "x"}]}, "note 1 needs a 'text'"),
    ({"notes": [{"text": "x", "position": "middle"}]}, "position 'middle' is not one of"),
    ({"notes": [{"text": "x", "position": "group:nope"}]}, "'group:nope' names no group"),
    ({"notes": [{"text": "x", "id": 2}]}, "id 2 must be a positive integer that no other node uses"),
    ({"notes": [{"text": "x", "pos": [1]}]}, "'pos' must be \\[x, y\\]"),
    ({"positions": {"42": [0, 0]}}, "'positions' names node 42"),
    ({"columns": {"1": -1}}, "'columns' of node 1 must be a whole number"),
])
def test_check_meta_errors(meta, message):
    with pytest.raises(headless.GraphError, match=message):
        layout.api_to_ui(api_sample(), REGISTRY, meta)


def test_meta_path(tmp_path):
    assert workflow_meta.meta_path("workflows/a.api.json").as_posix() == "workflows/a.meta.json"
    assert workflow_meta.meta_path("a.json").name == "a.meta.json" and workflow_meta.meta_path("a.txt").name == "a.txt.meta.json"
    bad = tmp_path / "bad.meta.json"
    bad.write_text("[1]")
    with pytest.raises(InputError, match="must be a JSON object"):
        workflow_meta.load_meta(bad)
    bad.write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        workflow_meta.load_meta(bad)


# --------------------------------------------------------------------------- loading


def test_load_workflow_formats(tmp_path):
    prompt = api_sample()
    api_file = tmp_path / "api.json"
    api_file.write_text(json.dumps(prompt))
    ui_file = tmp_path / "ui.json"
    ui_file.write_text(json.dumps(layout.api_to_ui(prompt, REGISTRY)))
    body_file = tmp_path / "body.json"
    body_file.write_text(json.dumps({"prompt": prompt, "client_id": "x"}))
    for path in (api_file, ui_file, body_file):
        assert headless.load_workflow(path, REGISTRY) == prompt


def test_load_workflow_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="bad.json is not valid JSON"):
        headless.load_workflow(bad, REGISTRY)
    with pytest.raises(InputError, match="cannot read workflow file .*missing.json"):
        headless.load_workflow(tmp_path / "missing.json", REGISTRY)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": "world"}))
    with pytest.raises(InputError, match="is not a ComfyUI workflow"):
        headless.load_workflow(other, REGISTRY)
