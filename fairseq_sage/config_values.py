"""The configuration values fairseq evaluates as Python, evaluated safely instead.

fairseq hands some configuration strings to Python's ``eval()`` while it builds a model, a task or
an optimizer (``eval(cfg.adam_betas)``, ``utils.eval_str_list(cfg.adaptive_softmax_cutoff)``,
``utils.eval_bool(args.decoder_attention)``, ``eval(args.encoder_layers)`` of fconv, ...): a
checkpoint whose configuration holds code in such a field would run it. Rather than guessing which
strings look like code, this module never lets one be evaluated as code:

- :func:`evaluate` is the only evaluator: it accepts a ``str`` (never ``bytes``, whose BOM or
  ``# coding:`` line ``eval()`` would honour) and evaluates nothing but literals and the list /
  tuple / number arithmetic fairseq's configurations use (``"[(256, 3)] * 4"``); anything else
  raises :class:`NotAValue`.
- :func:`plain_configuration` walks a loaded checkpoint's ``cfg`` and legacy ``args``: ``bytes``
  anywhere and OmegaConf interpolations (``${...}``) are refused, and every field fairseq evaluates
  (:data:`EVALUATED_FIELDS`) that holds a string is evaluated by :func:`evaluate` and replaced by
  the plain literal of its value (``repr``), which fairseq's ``eval()`` gives back equal; a field
  :func:`evaluate` refuses refuses the checkpoint. Every other string is data (paths, regexes,
  names) and is left as it is.
"""

import argparse
import ast
import operator
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

__all__ = [
    "EVALUATED_FIELDS", "MAX_SIZE", "NotAValue", "RefusedField",
    "evaluate", "evaluate_like_eval", "plain_configuration", "plain_literal",
]

EVALUATED_FIELDS = frozenset({
    # optimizers: eval(cfg.X)
    "adam_betas", "adamax_betas", "adafactor_eps", "lamb_betas",
    # models: eval(), utils.eval_str_list(), utils.eval_bool(), utils.eval_str_dict()
    "adaptive_softmax_cutoff", "adaptive_input_cutoff", "character_filters",
    "encoder_layers", "decoder_layers", "encoder_attention", "decoder_attention",  # fconv, fconv_self_att, lstm
    "self_attention", "project_input", "gated_attention", "downsample", "pretrained",  # fconv_self_att
    "conv_feature_layers", "conv_aggregator_layers", "override_encoder_layers",  # wav2vec, hubert, s2t
    "xformers_att_config", "decoder_xformers_att_config",  # MultiheadAttention's eval_str_dict()
    # fairseq-eval-lm and fairseq-validate: --model-overrides
    "model_overrides",
    # tasks, criterions, data
    "left_pad_source", "left_pad_target", "wer_args", "feature_encoder_spec",
    # distributed training (pipeline parallelism)
    "pipeline_balance", "pipeline_devices", "pipeline_encoder_balance", "pipeline_encoder_devices",
    "pipeline_decoder_balance", "pipeline_decoder_devices",
})
"""Names of the configuration fields whose string values fairseq passes to ``eval()`` (directly or
through ``eval_str_list`` / ``eval_str_dict`` / ``eval_bool``). tests/test_config_values.py scans
the installed fairseq's source for those calls and fails when one evaluates a field not named here."""

CONFIGURATION_KEYS = ("cfg", "args")
"""The entries of a fairseq checkpoint that hold its configuration: ``cfg`` (a dict since fairseq
0.10) and ``args`` (the ``argparse.Namespace`` of older checkpoints)."""

MAX_SIZE = 100_000
"""The largest size (:data:`Sized`) a value may have, which bounds the memory it and its ``repr``
take: ``"[0] * 10**9"`` and ``"[[0] * 10**5] * 10**5"`` are refused."""

EVAL_STRIPS = " \t"
"""The leading characters ``eval()`` of a ``str`` skips before compiling it."""


class NotAValue(ValueError):
    """A configuration string that :func:`evaluate` refuses to evaluate."""


Sized = Tuple[Any, int]
"""A value and its size: 1 for a number, the length of a string, and for a tuple, list, set or dict
1 plus the sizes of its items (keys and values)."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, complex))


def _bounded(value: Any, size: int) -> Sized:
    if size > MAX_SIZE:
        raise NotAValue(f"the value has more than {MAX_SIZE} items")
    return value, size


def _multiply(left: Sized, right: Sized) -> Sized:
    (a, a_size), (b, b_size) = left, right
    if isinstance(b, (list, tuple, str)):  # 4 * [(256, 3)]
        (a, a_size), (b, b_size) = right, left
    if isinstance(a, (list, tuple, str)):
        if not isinstance(b, int) or isinstance(b, bool):
            raise NotAValue("a sequence can only be repeated an int number of times")
        # a list or tuple counts itself once, its items once per repetition
        items = a_size if isinstance(a, str) else a_size - 1
        return _bounded(a * b, items * max(b, 0) + (0 if isinstance(a, str) else 1))
    return _arithmetic(operator.mul, left, right)


def _add(left: Sized, right: Sized) -> Sized:
    (a, a_size), (b, b_size) = left, right
    if type(a) is type(b) and isinstance(a, (list, tuple, str)):
        return _bounded(a + b, a_size + b_size - (0 if isinstance(a, str) else 1))
    return _arithmetic(operator.add, left, right)


def _arithmetic(function: Callable, left: Sized, right: Sized) -> Sized:
    if not (_is_number(left[0]) and _is_number(right[0])):
        raise NotAValue("+ joins two lists, tuples or strings; -, / and * otherwise apply to numbers")
    return function(left[0], right[0]), 1


BINARY_OPERATORS = {
    ast.Add: _add,
    ast.Mult: _multiply,
    ast.Sub: lambda left, right: _arithmetic(operator.sub, left, right),
    ast.Div: lambda left, right: _arithmetic(operator.truediv, left, right),
}
"""The binary operators :func:`evaluate` computes (no ``**``, ``<<`` or ``%``, which build huge
numbers or strings from short text)."""

UNARY_OPERATORS = {ast.UAdd: operator.pos, ast.USub: operator.neg}

CONTAINERS = {ast.Tuple: tuple, ast.List: list, ast.Set: set}


def _value(node: ast.AST) -> Sized:
    """The value of one node of a parsed expression and its size, or NotAValue."""
    if isinstance(node, ast.Constant):
        value = node.value
        return _bounded(value, len(value) if isinstance(value, (str, bytes)) else 1)
    if type(node) in CONTAINERS:
        items = [_value(item) for item in node.elts]
        return _bounded(CONTAINERS[type(node)](value for value, _ in items), 1 + sum(size for _, size in items))
    if isinstance(node, ast.Dict) and None not in node.keys:  # a None key is a ** unpacking
        pairs = [(_value(key), _value(item)) for key, item in zip(node.keys, node.values)]
        return _bounded({key: item for (key, _), (item, _) in pairs},
                        1 + sum(key_size + item_size for (_, key_size), (_, item_size) in pairs))
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY_OPERATORS:
        operand, size = _value(node.operand)
        if not _is_number(operand):
            raise NotAValue("a sign applies to numbers")
        return UNARY_OPERATORS[type(node.op)](operand), size
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY_OPERATORS:
        return BINARY_OPERATORS[type(node.op)](_value(node.left), _value(node.right))
    raise NotAValue(f"{type(node).__name__} is not a literal")


def evaluate(text: Any) -> Any:
    """The value of ``text`` as ``eval()`` would compute it, where ``text`` is a plain value.

    Accepted: a ``str`` which, after the leading spaces and tabs that ``eval()`` skips, is one Python
    expression made of literals (numbers, strings, ``True``, ``False``, ``None``, and tuples, lists,
    sets and dicts of literals), unary ``+`` / ``-`` on numbers, and the binary operators ``+``
    (two numbers, or two lists, tuples or strings), ``*`` (two numbers, or a list, tuple or string
    and an int), ``-`` and ``/`` (two numbers), where no value is larger than :data:`MAX_SIZE`
    (every number, string character and container counts one). Anything
    else (a name, an attribute, a call, a subscript, a comprehension, ``**``, ``bytes`` in place of
    the ``str``, text that does not parse) raises :class:`NotAValue` saying why; a value that is not
    text at all raises TypeError, as ``eval()`` does.
    """
    if isinstance(text, (bytes, bytearray)):
        raise NotAValue("bytes, not text")
    if not isinstance(text, str):
        raise TypeError(f"expected a string to evaluate, not {type(text).__name__}")
    try:
        tree = ast.parse(text.lstrip(EVAL_STRIPS), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as err:
        raise NotAValue(f"not a Python expression ({type(err).__name__})") from None
    try:
        return _value(tree.body)[0]
    except (TypeError, OverflowError, MemoryError, RecursionError, ZeroDivisionError) as err:
        raise NotAValue(f"not a plain value ({type(err).__name__}: {err})") from None


def evaluate_like_eval(source: Any, globals: Optional[dict] = None, locals: Optional[dict] = None) -> Any:
    """:func:`evaluate` with ``eval()``'s signature, to stand in for ``eval`` in fairseq's modules
    (the names ``eval()`` would look up are never looked up, so ``globals`` and ``locals`` are unused)."""
    return evaluate(source)


def plain_literal(text: str) -> str:
    """``repr`` of :func:`evaluate`'s value of ``text``, which evaluates back to an equal value."""
    value = evaluate(text)
    try:
        literal = repr(value)
        same = evaluate(literal) == value
    except (NotAValue, ValueError):  # inf, nan: their repr is a name; an int of over 4300 digits has none
        same = False
    if not same:
        raise NotAValue("no literal evaluates back to its value")
    return literal


def _fields(container: Any, where: str) -> Iterator[Tuple[Any, Any, Any, str]]:
    """(container, key, value, where) for every entry of dicts, Namespaces, lists and tuples, nested."""
    if isinstance(container, argparse.Namespace):
        container = vars(container)
    if isinstance(container, dict):
        entries = [(key, f"{where}.{key}" if isinstance(key, str) and key.isidentifier() else f"{where}[{key!r}]")
                   for key in list(container)]
    elif isinstance(container, (list, tuple, set, frozenset)):
        entries = [(index, f"{where}[{index}]") for index in range(len(container))]
        container = list(container) if isinstance(container, (set, frozenset)) else container
    else:
        return
    for key, key_where in entries:
        value = container[key]
        yield container, key, value, key_where
        yield from _fields(value, key_where)


class RefusedField(ValueError):
    """A field of a checkpoint's configuration that :func:`plain_configuration` refuses: ``field``
    names it (``cfg.model.decoder_attention``, ``args.adam_betas``), ``reason`` says why."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _refusal(value: Any) -> Optional[str]:
    """Why a configuration value is refused wherever it is, or None."""
    if isinstance(value, (bytes, bytearray)):
        return "holds bytes, not text"
    if isinstance(value, str) and "${" in value:
        return "holds an OmegaConf interpolation ${...}"
    return None


def plain_configuration(state: Any) -> Dict[str, str]:
    """Make a loaded checkpoint's configuration safe for fairseq, in place; return what changed.

    In ``state["cfg"]`` and ``state["args"]`` (nested dicts, Namespaces, lists, tuples, sets):
    ``bytes`` anywhere, and a string holding an OmegaConf interpolation ``${...}`` (whose resolvers
    run when fairseq reads the field; fairseq saves its configuration resolved), raise
    :class:`RefusedField`; every string in a field named in :data:`EVALUATED_FIELDS` is replaced by
    :func:`plain_literal` of it, or raises :class:`RefusedField` where :func:`evaluate` refuses it,
    except a blank one (multires_hubert's ``override_encoder_layers=""`` means "not set"; ``eval()``
    of it stops at once with a SyntaxError). Every other string is left as it is. Returns
    ``{field: new literal}`` for the strings replaced. Field names are written so that the message
    stays on one line (a key that is not an identifier appears as ``cfg.model['a\\nb']``).
    """
    replaced = {}
    if not isinstance(state, dict):
        return replaced
    for root in CONFIGURATION_KEYS:
        for container, key, value, where in _fields(state.get(root), root):
            reason = _refusal(value)
            if reason is not None:
                raise RefusedField(where, reason)
            if isinstance(value, str) and key in EVALUATED_FIELDS and value.strip():
                try:
                    literal = plain_literal(value)
                except NotAValue as err:
                    raise RefusedField(where, f"is evaluated by fairseq and is not a plain value ({err})") from None
                if literal != value:
                    container[key] = literal  # a dict, or a Namespace's own __dict__
                    replaced[where] = literal
    return replaced
