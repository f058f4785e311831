"""Grammar-constrained decoding (structured outputs, forced tool calls) on xgrammar.

A request asks for a grammar with a :class:`GrammarSpec` in its ``SamplingParams``.
:class:`Grammars` compiles it once per spec against the model's vocabulary (an LRU
cache: the compiled grammar holds a per-token mask table and costs milliseconds to
seconds to build) and gives each sequence its own matcher, a pushdown automaton
over the grammar that knows which tokens may come next. Per step,
:func:`mask_logits` writes each constrained row's allowed-token bitmask and sets the
others to -inf (rows without a grammar untouched); after sampling, the engine
advances the matcher with the chosen token; once the matcher has accepted a stop
token the grammar is finished and so is the sequence.

References: xgrammar (Dong et al., 2024, "XGrammar: Flexible and Efficient Structured
Generation Engine for Large Language Models"); vLLM's and SGLang's structured-output
backends use the same library the same way.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

KINDS = ("json_object", "json_schema", "regex", "choice", "grammar")

# response_format json_object: any JSON object, written compactly (no free whitespace a sampled model could
# repeat forever), numbers at most 16 digits before and 16 after the point (more than a float64 holds; an
# unbounded digit run is the other way a sampled JSON value never ends)
JSON_OBJECT_EBNF = r"""
root ::= object
value ::= object | array | string | number | "true" | "false" | "null"
object ::= "{" ( pair ( ", " pair )* )? "}"
pair ::= string ": " value
array ::= "[" ( value ( ", " value )* )? "]"
string ::= "\"" char* "\""
char ::= [^"\\\x00-\x1f] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} )
number ::= "-"? ( "0" | [1-9] [0-9]{0,15} ) ( "." [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,3} )?
"""


# xgrammar's rules for integers and numbers a schema leaves unbounded, and the same digit limits as
# JSON_OBJECT_EBNF: (rule, unbounded text, bounded text)
_DIGIT_LIMITS = (("basic_integer", "[1-9] [0-9]*", "[1-9] [0-9]{0,15}"),
                 ("basic_number_2", "[1-9] [0-9]*", "[1-9] [0-9]{0,15}"),
                 ("basic_number_3", "basic_number_digits{1, -1}", "basic_number_digits{1, 16}"),
                 ("basic_number_5", "basic_number_digits{1, -1}", "basic_number_digits{1, 3}"))


def json_schema_ebnf(schema: str) -> str:
    """The EBNF of a JSON schema, written compactly, with unbounded integers and numbers held to 16 digits
    before and after the point and 3 in the exponent (a schema's own ``minimum``/``maximum`` bound them too):
    without a limit a sampled ``{"n": 1234...`` can write digits until ``max_tokens``."""
    import xgrammar as xgr

    ebnf = str(xgr.Grammar.from_json_schema(schema, any_whitespace=False, strict_mode=True))
    rules = {line.split(" ::= ", 1)[0]: line for line in ebnf.splitlines()}
    for name, unbounded, bounded in _DIGIT_LIMITS:
        if name in rules:
            if unbounded not in rules[name]:  # xgrammar wrote the rule another way: fail loudly, not silently
                raise RuntimeError(f"xgrammar's {name} rule changed: {rules[name]}")
            ebnf = ebnf.replace(rules[name], rules[name].replace(unbounded, bounded))
    return ebnf


class GrammarError(ValueError):
    """A schema, regex, choice list or EBNF grammar that cannot be compiled (HTTP 400 naming ``param``)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class GrammarDeadEnd(GrammarError):
    """The grammar allows no token of the vocabulary after what was generated (it needs a character the
    tokenizer cannot write): the request fails alone, as the client's error."""


@dataclass(frozen=True)
class GrammarSpec:
    """What the output must match.

    kind: ``json_object`` (any JSON object), ``json_schema`` (``source`` is the schema as JSON text),
    ``regex``, ``choice`` (``source`` is a JSON list of the allowed strings) or ``grammar``
    (``source`` is xgrammar / GBNF-style EBNF with a ``root`` rule). ``param`` names the request
    field it came from, for error messages.
    """
    kind: str
    source: str = ""
    param: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"grammar kind must be one of {KINDS}, got {self.kind!r}")

    @staticmethod
    def json_schema(schema: dict | str, param: str | None = None) -> "GrammarSpec":
        text = schema if isinstance(schema, str) else json.dumps(schema)  # key order is the output order
        return GrammarSpec("json_schema", text, param)

    @staticmethod
    def choice(options: list[str], param: str | None = None) -> "GrammarSpec":
        return GrammarSpec("choice", json.dumps(list(options), ensure_ascii=False), param)


def _choice_ebnf(source: str, param: str | None, tokenizer) -> str:
    options = json.loads(source)
    if not options or not all(isinstance(o, str) and o for o in options):
        raise GrammarError("choice must be a non-empty list of non-empty strings", param)
    for option in options:  # whitespace may differ (SentencePiece drops a leading space); characters may not
        written = tokenizer.decode(tokenizer.encode(option, add_special_tokens=False), skip_special_tokens=False)
        if written.split() != option.split():
            raise GrammarError(f"choice {option!r} cannot be written with this model's vocabulary", param)
    # JSON string literals are valid EBNF string literals (same escapes)
    return "root ::= " + " | ".join(json.dumps(o, ensure_ascii=False) for o in options)


class Grammars:
    """Compiles grammar specs for one model's vocabulary (cached) and makes matchers.

    ``tokenizer`` is the model's :class:`models.Tokenizer`; ``vocab_size`` the width of its
    logits (at least the tokenizer's vocabulary: checkpoints pad it); ``stop_token_ids`` the
    tokens that end a sequence (a finished grammar allows only these).
    """

    CACHE_SIZE = 256

    def __init__(self, tokenizer, vocab_size: int, stop_token_ids: list[int]):
        self._tokenizer, self.vocab_size, self._stop_ids = tokenizer, vocab_size, list(stop_token_ids)
        self._compiler = None
        self._cache: OrderedDict[GrammarSpec, object] = OrderedDict()
        self._lock = threading.Lock()  # the API validates in worker threads while the engine compiles

    def _xgr_compiler(self):
        if self._compiler is None:  # the vocabulary scan costs ~0.1 s: only models that see a grammar pay it
            import xgrammar as xgr
            from transformers import PreTrainedTokenizerFast

            backend = PreTrainedTokenizerFast(tokenizer_object=self._tokenizer.backend)
            info = xgr.TokenizerInfo.from_huggingface(backend, vocab_size=self.vocab_size,
                                                      stop_token_ids=self._stop_ids)
            self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        return self._compiler

    def compile(self, spec: GrammarSpec):
        """The compiled grammar for ``spec`` (cached); raises :class:`GrammarError` if it is invalid."""
        with self._lock:
            if spec in self._cache:
                self._cache.move_to_end(spec)
                return self._cache[spec]
            compiled = self._compile(spec)
            self._cache[spec] = compiled
            if len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
            return compiled

    def _compile(self, spec: GrammarSpec):
        compiler = self._xgr_compiler()
        try:
            if spec.kind == "json_object":
                return compiler.compile_grammar(JSON_OBJECT_EBNF)
            if spec.kind == "json_schema":
                json.loads(spec.source)
                return compiler.compile_grammar(json_schema_ebnf(spec.source))
            if spec.kind == "regex":
                return compiler.compile_regex(spec.source)
            if spec.kind == "choice":
                return compiler.compile_grammar(_choice_ebnf(spec.source, spec.param, self._tokenizer))
            return compiler.compile_grammar(spec.source)
        except GrammarError:
            raise
        except (RuntimeError, ValueError, TypeError) as err:  # xgrammar reports parse errors as RuntimeError
            raise GrammarError(f"invalid {spec.kind.replace('_', ' ')}: {_xgr_message(err)}", spec.param) from None

    def matcher(self, spec: GrammarSpec) -> "GrammarState":
        import xgrammar as xgr

        return GrammarState(xgr.GrammarMatcher(self.compile(spec)), spec.param)


def _xgr_message(err: Exception) -> str:
    # xgrammar prefixes "[hh:mm:ss] /project/cpp/file.cc:123: "
    text = str(err).strip()
    return text.split(": ", 1)[1] if text.startswith("[") and ": " in text else text


class GrammarState:
    """One sequence's position in its grammar."""

    def __init__(self, matcher, param: str | None = None):
        self._matcher, self.param = matcher, param

    def accept(self, token_id: int) -> bool:
        """Advance over a sampled token; False if the grammar does not allow it (then nothing moves)."""
        return self._matcher.accept_token(token_id)

    @property
    def finished(self) -> bool:
        return self._matcher.is_terminated()

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        self._matcher.fill_next_token_bitmask(bitmask, row)


def mask_logits(logits: torch.Tensor, states: list[GrammarState | None]) -> torch.Tensor:
    """``logits [N, V]`` with every token a row's grammar forbids at -inf (a new tensor when any row
    has a grammar; the input is returned untouched when none has)."""
    rows = [i for i, s in enumerate(states) if s is not None and not s.finished]
    if not rows:
        return logits
    import xgrammar as xgr

    bitmask = xgr.allocate_token_bitmask(len(rows), logits.shape[1])  # int32 [R, ceil(V / 32)]
    for k, i in enumerate(rows):
        states[i].fill(bitmask, k)
    dead = (bitmask == 0).all(-1).nonzero().flatten().tolist()
    if dead:
        raise GrammarDeadEnd("the output cannot go on: its grammar allows no token of this model's vocabulary "
                             "here (it needs a character the tokenizer cannot write)", states[rows[dead[0]]].param)
    out = logits.clone()
    out[rows] = _apply_bitmask(logits[rows], bitmask)
    return out


_BITS = {}  # device -> arange(32) for unpacking bitmask words


def _apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """``logits [R, V]`` with the tokens whose bit is clear in ``bitmask [R, ceil(V / 32)]`` at -inf
    (bit k of word j is token 32 j + k), by unpacking the words with shifts: on the CPU xgrammar's loop
    costs ~1.6 ms for 8 rows of a 49k vocabulary, this ~0.3 ms; on a GPU it is a few element-wise kernels
    with nothing to compile (xgrammar's CUDA kernel is built on first use, which would be after ``ready``)."""
    bitmask = bitmask.to(logits.device, non_blocking=True)
    shifts = _BITS.setdefault(logits.device, torch.arange(32, dtype=torch.int32, device=logits.device))
    allowed = ((bitmask.unsqueeze(-1) >> shifts) & 1).bool().flatten(1)[:, :logits.shape[1]]
    return logits.masked_fill(~allowed, float("-inf"))