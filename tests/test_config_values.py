"""The safe evaluator of configuration values, and the rule that no checkpoint string runs as code.

No fairseq CLI runs here (tests/test_checkpoint_code.py has those): the evaluator against
Python's own ``eval()`` of trusted text; a generated family of payloads (leading white space of
every kind ``eval()`` skips, line continuations, comments, parentheses over lines, coding lines,
bytes with a BOM or a coding line), each first shown to run under ``eval()``, then refused in
every field fairseq evaluates, in each form a checkpoint stores its configuration, by
:func:`plain_configuration` and by :func:`load_checkpoint` on a real file; fairseq's own
evaluation with the plugin loaded; the installed fairseq's source scanned for what it evaluates;
and the defaults of every architecture fairseq registers evaluated without a refusal.
"""

import argparse
import ast
import itertools
import warnings
from pathlib import Path

import pytest
import torch

from fairseq_sage.checkpoints import CheckpointError, load_checkpoint
from fairseq_sage.config_values import (
    EVALUATED_FIELDS, MAX_SIZE, NotAValue, RefusedField, evaluate, plain_configuration,
)

fairseq = pytest.importorskip("fairseq")
import fairseq_sage.fairseq  # noqa: E402  (the plugin: fairseq's modules get the safe eval)
from fairseq import utils as fairseq_utils  # noqa: E402
from fairseq_sage.config_values import evaluate_like_eval  # noqa: E402

# --- the evaluator -----------------------------------------------------------------------------------

PLAIN_VALUES = [
    "(0.9, 0.98)", "(0.9,0.999)", "[20]", "1e-07", "-1", "+2", "0.25,0.5", "{}", '{"beam": 4}', "{'a': [1, 2]}",
    "{1, 2}", "True", "False", "None", "1", "'text'", "()", "[]", "(1+2j)", "10000,50000,200000",
    "[(256, 3)] * 4", "[(512, 3)] * 9 + [(1024, 3)] * 4 + [(2048, 1)] * 2", "4 * [(256, 3)]",
    "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]", "'ab' * 3", "1 - 2", "1 / 4", "2 * 3.5",
    " (0.9, 0.98)", "\t[20]", " \t 1", "\\\n[1]", "# a comment\n[1]", "(\n 1,\n 2\n)", "[1] # trailing",
    "[0] * %d" % (MAX_SIZE - 1), "[[0] * 9] * %d" % ((MAX_SIZE - 1) // 10), "'a' * %d" % MAX_SIZE,
]


@pytest.mark.parametrize("text", PLAIN_VALUES)
def test_plain_values_evaluate_as_python_does(text):
    """Python's eval() of this trusted text is the reference."""
    value = evaluate(text)
    assert value == eval(text) and type(value) is type(eval(text))


NOT_VALUES = [
    "__import__('os').system('true')", "open('/etc/passwd')", "x", "os.sep", "sys.modules['os']", "[1][0]",
    "lambda: 0", "[x for x in range(3)]", "{x: 1 for x in y}", "(x for x in y)", "f'{1}'", "9**9**9", "2 ** 3",
    "1 << 10", "'%d' % 1", "not 1", "1 if 1 else 2", "1 < 2", "1 and 2", "(x := 1)", "{**{}}", "[*()]",
    "[0] * %d" % MAX_SIZE, "[[0] * 9] * %d" % (MAX_SIZE // 10), "[[]] * %d" % MAX_SIZE, "'a' * %d" % (MAX_SIZE + 1),
    "[0] * 99999 + [0] + [0]", "'a' * 10**10", "[0] * 10**9", "[[0] * 10000] * 10000",
    "[1] * 2.0", "[1] + (2,)", "[1] - [1]", "-[1]",
    "1 / 0", "", "   ", "(" * 1000, "1\x002", "\ufeff1", "\v1", "${oc.env:HOME}",
    "transformer", "/tmp/data-bin", "exp[1]", "run(2)", "fc[12]",  # data, but not values fairseq could evaluate
]


@pytest.mark.parametrize("text", NOT_VALUES)
def test_anything_else_is_refused(text):
    with pytest.raises(NotAValue):
        evaluate(text)


def test_bytes_are_refused_and_other_types_are_a_type_error_as_in_eval():
    for data in (b"1", bytearray(b"[1]"), b"\xef\xbb\xbf1"):
        with pytest.raises(NotAValue, match="bytes"):
            evaluate(data)
    for value in (1, True, None, [1]):
        with pytest.raises(TypeError):
            evaluate(value)
        with pytest.raises(TypeError):
            eval(value)


# --- the payload family ---------------------------------------------------------------------------------


def payload(marker: Path) -> str:
    return f"__import__('pathlib').Path({str(marker)!r}).touch()"


PREFIXES = ["", " ", "\t", " \t ", "\f", "\\\n", " \\\n", "# comment\n", "\n", "\r\n", "\r",
            "# -*- coding: latin-1 -*-\n"]
"""What may stand before the payload: every leading white space and line that eval() skips."""

WRAPPERS = ["{}", "({})", "(\n{}\n)", "(\n # comment\n {}\n)", "{} # trailing", "[{}]", "[\n{}\\\n]", "(1,\n{})",
            "{{'key':\n{}}}", "(None or\n{})"]
"""How the payload may be written: bare, in parentheses or brackets over lines, with comments, in a container."""

BYTE_FORMS = {
    "utf-8": lambda code: code.encode(),
    "bom": lambda code: b"\xef\xbb\xbf" + code.encode(),
    "coding utf-8": lambda code: b"# coding: utf-8\n" + code.encode(),
    "coding utf-7": lambda code: b"# -*- coding: utf-7 -*-\n" + code.replace("_", "+AF8-").encode(),
    "bytearray": lambda code: bytearray(b" " + code.encode()),
}
"""Bytes, which eval() decodes as their BOM or coding line says (latin-1 text would hide the payload)."""


def payload_family(marker: Path) -> dict:
    """name -> text or bytes whose eval() creates ``marker``."""
    code = payload(marker)
    family = {f"{prefix!r}+{wrapper!r}": prefix + wrapper.format(code)
              for prefix, wrapper in itertools.product(PREFIXES, WRAPPERS)}
    family.update({f"bytes {name}": encode(code) for name, encode in BYTE_FORMS.items()})
    return family


def test_every_payload_of_the_family_runs_under_eval(tmp_path):
    """The family is live: Python's eval() runs each one (fairseq's evaluation, without the plugin)."""
    marker = tmp_path / "ran"
    for name, text in payload_family(marker).items():
        eval(text)
        assert marker.exists(), name
        marker.unlink()


def forms(field: str, text) -> dict:
    """The places a checkpoint keeps ``field``: cfg.model as a Namespace (fairseq's models with
    add_args) or a dict (dataclass models), cfg.optimizer, and the legacy args."""
    return {
        f"cfg.model.{field}": {"cfg": {"model": argparse.Namespace(arch="x", **{field: text}), "task": {"data": "/d"}}},
        f"cfg.optimizer.{field}": {"cfg": {"optimizer": {"_name": "adam", field: text}}},
        f"cfg.model.{field} (dict)": {"cfg": {"model": {"_name": "x", field: text}}},
        f"args.{field}": {"cfg": None, "args": argparse.Namespace(data="/d", **{field: text})},
    }


def test_every_payload_is_refused_in_every_evaluated_field_and_form(tmp_path):
    marker = tmp_path / "ran"
    refused = 0
    for (name, text), field in itertools.product(payload_family(marker).items(), sorted(EVALUATED_FIELDS)):
        for where, state in forms(field, text).items():
            with pytest.raises(RefusedField) as refusal:
                plain_configuration(state)
            assert refusal.value.field == where.split(" ")[0], (name, where)
            refused += 1
    assert refused == len(payload_family(marker)) * len(EVALUATED_FIELDS) * 4
    assert not marker.exists()


def test_bytes_and_interpolations_are_refused_in_any_field():
    for value in (b"/data", bytearray(b"x"), "${oc.env:HOME}", "a${b}"):
        for state, where in [({"cfg": {"task": {"data": value}}}, "cfg.task.data"),
                             ({"args": argparse.Namespace(data=["x", value])}, "args.data[1]")]:
            with pytest.raises(RefusedField) as refusal:
                plain_configuration(state)
            assert refusal.value.field == where


def test_values_no_literal_gives_back_are_refused_in_a_checkpoint():
    """inf has the repr ``inf`` (a name), an int of over 4300 digits has no repr at all."""
    for text in ("1e999", "-1e999", "9" * 3000 + " * " + "9" * 3000):
        evaluate(text)  # a value...
        with pytest.raises(RefusedField, match="no literal evaluates back to its value"):  # ...but not a literal
            plain_configuration({"cfg": {"model": {"adaptive_softmax_cutoff": text}}})


def test_every_payload_is_refused_by_load_checkpoint_from_a_file(tmp_path):
    """One file per payload (in cfg.model.adaptive_softmax_cutoff, and legacy args.decoder_attention)."""
    marker = tmp_path / "ran"
    for index, (name, text) in enumerate(payload_family(marker).items()):
        for field, state in [("cfg.model.adaptive_softmax_cutoff", forms("adaptive_softmax_cutoff", text)
                              ["cfg.model.adaptive_softmax_cutoff"]),
                             ("args.decoder_attention", forms("decoder_attention", text)["args.decoder_attention"])]:
            path = tmp_path / f"{index}.pt"
            torch.save(dict(state, model={"w": torch.zeros(2)}), path)
            with pytest.raises(CheckpointError) as refused:
                load_checkpoint(str(path))
            message = str(refused.value)
            assert message.startswith(f"{path}: refused to load, {field} ") and "\n" not in message, (name, message)
            assert message.endswith("; only load checkpoints you trust")
    assert not marker.exists()


def test_values_become_plain_literals_and_data_is_left_alone(tmp_path):
    state = {
        "cfg": {
            "model": argparse.Namespace(encoder_layers="[(256, 3)] * 2", decoder_attention=" True",
                                        adaptive_softmax_cutoff="\t10000,50000", dropout=0.1),
            "optimizer": {"adam_betas": "(0.9, 0.98)"},
            "task": {"data": "run(2)/data-bin"},
            "checkpoint": {"save_dir": "exp[1]"},
            "sage": {"sage_params": "fc[12]", "note": payload(tmp_path / "ran")},  # never evaluated: data
        },
    }
    path = tmp_path / "plain.pt"
    torch.save(state, path)
    loaded = load_checkpoint(str(path))["cfg"]
    assert vars(loaded["model"]) == {"encoder_layers": "[(256, 3), (256, 3)]", "decoder_attention": "True",
                                     "adaptive_softmax_cutoff": "(10000, 50000)", "dropout": 0.1}
    assert loaded["optimizer"] == {"adam_betas": "(0.9, 0.98)"}
    assert loaded["task"] == state["cfg"]["task"] and loaded["checkpoint"] == state["cfg"]["checkpoint"]
    assert loaded["sage"] == state["cfg"]["sage"]
    assert not (tmp_path / "ran").exists()


# --- fairseq with the plugin ----------------------------------------------------------------------------


def test_fairseq_evaluates_with_the_safe_evaluator(tmp_path):
    """Defence in depth: even a string that reached fairseq unchecked cannot run."""
    from fairseq.models import fconv
    from fairseq.optim import adam

    assert fairseq_utils.eval is fconv.eval is adam.eval is evaluate_like_eval
    marker = tmp_path / "ran"
    for name, text in payload_family(marker).items():
        evaluators = [fairseq_utils.eval_bool, fconv.eval]
        if isinstance(text, str):  # eval_str_list and eval_str_dict evaluate strings only
            evaluators += [fairseq_utils.eval_str_list, fairseq_utils.eval_str_dict]
        for fairseq_evaluates in evaluators:
            with pytest.raises(NotAValue):
                fairseq_evaluates(text)
    assert not marker.exists()
    # fairseq's own values evaluate as before, and eval_bool keeps its TypeError fallback for non-strings
    assert fairseq_utils.eval_str_list("[(256, 3)] * 2", type=tuple) == [(256, 3), (256, 3)]
    assert fairseq_utils.eval_str_list("10000,50000", type=int) == [10000, 50000]
    assert fairseq_utils.eval_bool("1") is True and fairseq_utils.eval_bool(True) is False
    assert fairseq_utils.eval_str_dict('{"beam": 4}') == {"beam": 4}


FAIRSEQ_SOURCES = [Path(fairseq.__file__).parent, Path(fairseq.__file__).parent.parent / "fairseq_cli"]
EVAL_HELPERS = {"eval_str_list", "eval_str_dict", "eval_bool"}
NOT_CONFIGURATION = {("data/codedataset.py", "line.strip()")}
"""Calls of eval() on something other than a configuration field: lines of a data file."""
REACHED_THROUGH_OTHER_NAMES = {"decoder_xformers_att_config"}
"""Evaluated fields the scan sees under another name: transformer_lm's decoder_xformers_att_config
becomes cfg.decoder.xformers_att_config, which MultiheadAttention evaluates."""


def _called_name(call: ast.Call):
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def evaluated_arguments():
    """(source file, what is evaluated) for every call of eval() or of fairseq's eval_* helpers in the
    installed fairseq and fairseq_cli: a field name (``x.adam_betas``, ``getattr(x, "adam_betas", ...)``
    or a parameter that carries one),
    or the expression's source where it is neither. Arguments of argparse ``type=lambda x: ...`` (the
    command line) and of the helpers' own definitions are left out."""
    found = set()

    def visit(node, path, inner_names):
        if isinstance(node, ast.Lambda):
            inner_names = inner_names | {arg.arg for arg in node.args.args}
        if isinstance(node, ast.FunctionDef) and node.name in EVAL_HELPERS:
            inner_names = inner_names | {arg.arg for arg in node.args.args}
        if isinstance(node, ast.Call) and node.args:
            name = _called_name(node)
            if (name == "eval" and isinstance(node.func, ast.Name)) or name in EVAL_HELPERS:
                argument = node.args[0]
                if isinstance(argument, ast.Attribute):
                    found.add((path, argument.attr))
                elif (isinstance(argument, ast.Call) and _called_name(argument) == "getattr"
                      and isinstance(argument.args[1], ast.Constant)):
                    found.add((path, argument.args[1].value))
                elif isinstance(argument, ast.Name):
                    if argument.id not in inner_names:
                        found.add((path, argument.id))
                else:
                    found.add((path, ast.unparse(argument)))
        for child in ast.iter_child_nodes(node):
            visit(child, path, inner_names)

    for root in FAIRSEQ_SOURCES:
        for file in sorted(root.rglob("*.py")):
            relative = file.relative_to(root).as_posix()
            if relative.startswith("examples/"):  # not imported by the CLIs
                continue
            with warnings.catch_warnings():  # invalid escape sequences in fairseq's strings
                warnings.simplefilter("ignore", DeprecationWarning)
                tree = ast.parse(file.read_text(encoding="utf-8"))
            visit(tree, relative, frozenset())
    return found


def test_the_list_of_evaluated_fields_matches_the_installed_fairseq():
    found = evaluated_arguments() - NOT_CONFIGURATION
    fields = {what for _, what in found}
    missing = sorted(f"{path}: {what}" for path, what in found if what not in EVALUATED_FIELDS)
    assert not missing, f"fairseq evaluates fields EVALUATED_FIELDS lacks: {missing}"
    assert EVALUATED_FIELDS - fields == REACHED_THROUGH_OTHER_NAMES, "EVALUATED_FIELDS names fields not evaluated"
    assert {"adam_betas", "adaptive_softmax_cutoff", "decoder_attention", "encoder_layers"} <= fields


def architecture_defaults():
    """arch -> the Namespace of its defaults, built as fairseq's parser does (add_args with defaults
    suppressed, then the architecture function)."""
    from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY

    defaults = {}
    for arch, configure in sorted(ARCH_CONFIG_REGISTRY.items()):
        parser = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
        ARCH_MODEL_REGISTRY[arch].add_args(parser)
        args, _ = parser.parse_known_args([])
        configure(args)
        defaults[arch] = args
    return defaults


def test_the_defaults_of_every_architecture_fairseq_registers_evaluate():
    """No false refusal: fconv's ``'[(256, 3)] * 4'``, lstm's ``'1'``, fconv_self_att's ``'False'``, ...,
    each equal to Python's eval() of the same (trusted) default."""
    evaluated = {}
    for arch, args in architecture_defaults().items():
        for field in EVALUATED_FIELDS & set(vars(args)):
            text = getattr(args, field)
            if isinstance(text, str):
                assert evaluate(text) == eval(text), (arch, field, text)
                evaluated[arch, field] = text
        plain_configuration({"args": args})
    assert evaluated["fconv_iwslt_de_en", "encoder_layers"] == "[(256, 3)] * 4"
    assert ("fconv_wmt_en_de", "decoder_layers") in evaluated and ("lstm", "decoder_attention") in evaluated
    assert ("fconv_self_att", "pretrained") in evaluated
    assert ("transformer_lm_wiki103", "adaptive_softmax_cutoff") in evaluated


def test_dataclass_defaults_of_evaluated_fields_evaluate():
    """Dataclass configurations (wav2vec's conv_feature_layers, adam's betas, ...): every default of a
    field fairseq evaluates that is a string."""
    import dataclasses

    from fairseq.dataclass import FairseqDataclass

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    checked = set()
    for cls in subclasses(FairseqDataclass):
        for field in dataclasses.fields(cls):
            if field.name in EVALUATED_FIELDS and isinstance(field.default, str) and "${" not in field.default:
                plain_configuration({"cfg": {"model": {field.name: field.default}}})  # does not raise
                if field.default.strip():  # multires_hubert's "" means "not set", and is left as it is
                    assert evaluate(field.default) == eval(field.default), (cls.__name__, field.name)
                checked.add(field.name)
    assert {"adam_betas", "conv_feature_layers", "character_filters"} <= checked
