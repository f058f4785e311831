"""The synchronous engine: add requests, ``step()`` until they finish.

    out = scheduler.schedule()                 # who runs this step, and how many tokens each
    logits, seqs = runner.run(out)             # one packed forward pass
    self._postprocess(seqs, sample(logits))    # append tokens, detokenise, stop
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field, replace

import torch

from models import LoadedModel

from .beam import BeamState
from .block_manager import BlockManager
from .config import EngineConfig
from .detokenize import TextState
from .faults import RequestFailed, describe, is_unrecoverable
from .grammar import GrammarError, Grammars
from .model_runner import ModelRunner, graph_memory, kv_cache_blocks
from .outputs import CompletionOutput, RequestOutput, RequestTimes, TokenLogprob
from .sampler import banned_tokens, sample
from .sampling_params import SamplingParams
from .scheduler import Scheduler
from .sequence import FinishReason, Sequence
from .staging import Staging
from .warmup import WarmupPlan, run_plan

log = logging.getLogger("kernelserve.engine")


class RequestError(ValueError):
    """A request the engine cannot take (too long for the model or the cache); becomes HTTP 400."""

    def __init__(self, message: str, code: str = "invalid_request", param: str | None = None):
        super().__init__(message)
        self.code, self.param = code, param


@dataclass
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    seqs: list[Sequence]
    texts: dict[int, TextState]
    times: RequestTimes
    pending: dict[int, CompletionOutput] = field(default_factory=dict)  # news since the last report
    beam: BeamState | None = None
    prompt_logprobs_sent: bool = False

    @property
    def finished(self) -> bool:
        return all(s.finished for s in self.seqs)


@dataclass
class EngineCounters:
    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished: dict[str, int] = field(default_factory=dict)
    failed: int = 0  # requests failed by an error inside the engine


def _window_left(loaded: LoadedModel) -> int | None:
    """Keys a query sees behind itself in every layer, where every layer has a sliding window (its KV blocks
    behind the window can go back to the pool); None where some layer attends to the whole sequence."""
    windows = getattr(loaded.config, "layer_windows", ())
    if loaded.is_encoder_decoder or not windows or not all(windows):
        return None
    return max(windows) - 1  # HF's window of W tokens: query p sees keys p - W + 1 .. p


class LLMEngine:
    def __init__(self, loaded: LoadedModel, config: EngineConfig = EngineConfig()):
        self.loaded = loaded
        self.config = config
        num_blocks = kv_cache_blocks(loaded, config)
        # a decoder's cached prefix only means the same thing under the same encoder input: no prefix
        # caching for encoder-decoders (their decoder prompts all start with the same start token)
        caching = config.enable_prefix_caching and not loaded.is_encoder_decoder
        self.block_manager = BlockManager(num_blocks, config.block_size, caching, window_left=_window_left(loaded))
        self.scheduler = Scheduler(config, self.block_manager)
        limit = min(loaded.max_model_len, num_blocks * config.block_size)
        self.max_model_len = min(limit, config.max_model_len or limit)
        self.runner = ModelRunner(loaded, config, num_blocks, self.max_model_len)
        self.warmup_timings: dict = {}
        if config.warmup == "on" or (config.warmup == "auto" and loaded.device.type == "cuda"):
            plan = WarmupPlan.for_engine(config)
            self.warmup_timings = run_plan(self.runner, plan, self.max_model_len, num_blocks, config.block_size)
            self._check_graph_memory()
        self.eos_ids = set(loaded.eos_token_ids)
        self.grammars = Grammars(loaded.tokenizer, loaded.config.vocab_size, sorted(self.eos_ids))
        self.requests: dict[str, Request] = {}
        self.rng = random.Random()  # unseeded rows' draws; seeded rows hash their seed (sampler.seeded_uniform)
        self.sampling_staging = Staging(loaded.device, torch.float64)
        self.counters = EngineCounters()

    def _check_graph_memory(self) -> None:
        """The KV cache was sized with an estimate of the graphs' memory kept back; say so if capture took more."""
        graphs, kept = self.runner.graphs, graph_memory(self.loaded, self.config)
        if graphs is not None and self.config.kv_cache_memory is None and graphs.pool_bytes > kept:
            log.warning("decode CUDA graphs took %.0f MiB, more than the %.0f MiB kept back from the KV cache: "
                        "if memory runs short, pass --kv-cache-memory or --enforce-eager", graphs.pool_bytes / 2**20,
                        kept / 2**20)

    # -- requests ---------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Admit a request, or raise :class:`RequestError` (nothing of it is kept then)."""
        if request_id in self.requests:
            raise RequestError(f"request id {request_id!r} is already in use")
        if self.loaded.bad_words:  # the model's own (generation_config.json), with the request's
            params = replace(params, bad_words_token_ids=tuple(dict.fromkeys(params.bad_words_token_ids +
                                                                              self.loaded.bad_words)))
        self._check_request(prompt_token_ids, params)
        now = time.monotonic()
        count = 1 if params.use_beam_search else params.n  # beams grow from one sequence
        if self.loaded.is_encoder_decoder:  # the prompt feeds the encoder; the decoder starts from its start token
            start = self._decoder_start(params)
            seqs = [Sequence(request_id, i, list(start), params, now, encoder_token_ids=list(prompt_token_ids))
                    for i in range(count)]
        else:
            seqs = [Sequence(request_id, i, list(prompt_token_ids), params, now) for i in range(count)]
        # build everything first, then commit: a failure half way leaves no trace in the scheduler
        texts = {s.seq_id: TextState.create(self.loaded.tokenizer, s.prompt_token_ids, params) for s in seqs}
        if params.grammar is not None:
            for s in seqs:
                s.grammar = self.grammars.matcher(params.grammar)
        beam = None
        if params.use_beam_search:
            stops = set(params.stop_token_ids) | (set() if params.ignore_eos else self.eos_ids)
            beam = BeamState(params, stops, scores={seqs[0].seq_id: 0.0}, forced=len(params.forced_token_ids))
        self.requests[request_id] = Request(request_id, list(prompt_token_ids), params, seqs, texts,
                                            RequestTimes(now), beam=beam)
        for s in seqs:
            self.scheduler.add(s)
        self.counters.prompt_tokens += len(prompt_token_ids)

    def _decoder_start(self, params: SamplingParams) -> list[int]:
        """An encoder-decoder's first decoder tokens: its start token, then any forced ones (a target language)."""
        return [self.loaded.config.decoder_start_token_id, *params.forced_token_ids]

    def _check_request(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        if not prompt_token_ids:
            raise RequestError("the prompt is empty", param="prompt")
        vocab = self.loaded.config.vocab_size
        if params.forced_token_ids and not self.loaded.is_encoder_decoder:
            raise RequestError("forced decoder tokens need an encoder-decoder model", param="target_lang")
        if any(not 0 <= t < vocab for t in params.forced_token_ids):
            raise RequestError(f"forced token ids must be in [0, {vocab})", param="target_lang")
        if any(not 0 <= t < vocab for t in prompt_token_ids):
            raise RequestError(f"prompt token ids must be in [0, {vocab})", param="prompt")
        if any(not 0 <= t < vocab for t, _ in params.logit_bias):  # the sampler adds them at row * vocab + t
            raise RequestError(f"logit_bias token ids must be in [0, {vocab})", param="logit_bias")
        if params.priority and self.config.scheduling_policy != "priority":
            raise RequestError("priority is only honoured when the server runs with --scheduling-policy priority",
                               param="priority")
        width = params.beam_width if params.use_beam_search else params.n
        if width > self.config.max_n:
            name = "best_of" if params.use_beam_search else "n"
            raise RequestError(f"{name} must be at most {self.config.max_n} (the server's --max-n), got {width}",
                               param=name)
        if self.loaded.is_encoder_decoder:
            if params.prompt_logprobs is not None:
                raise RequestError("prompt_logprobs needs a decoder-only model (an encoder's input has no "
                                   "next-token probabilities)", param="prompt_logprobs")
            self._check_encoder_input(prompt_token_ids, params)
        elif len(prompt_token_ids) + params.max_tokens > self.max_model_len:
            raise RequestError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{len(prompt_token_ids) + params.max_tokens} tokens ({len(prompt_token_ids)} in the messages, "
                f"{params.max_tokens} in the completion). Please reduce the length of the messages or completion.",
                code="context_length_exceeded", param="messages")
        self._check_kv_capacity(len(prompt_token_ids), params, width)
        if params.grammar is not None:
            try:
                self.grammars.compile(params.grammar)  # cached: the matchers reuse it
            except GrammarError as err:
                raise RequestError(str(err), param=err.param) from None

    def max_tokens_room(self, prompt_len: int, width: int = 1, forced: int = 0) -> int:
        """The most tokens a request may generate: what its context leaves, and what ``width``
        sequences of it can hold together in the KV cache (the default ``max_tokens``). An encoder-decoder's
        decoder holds its start token and ``forced`` tokens (a target language) before them."""
        used = 1 + forced if self.loaded.is_encoder_decoder else prompt_len
        context = self.max_model_len - used
        share = (self.block_manager.num_blocks // max(1, width)) * self.config.block_size - used
        return max(1, min(context, share))

    def _check_kv_capacity(self, prompt_len: int, params: SamplingParams, width: int) -> None:
        """Refuse a request whose sequences could never be in the KV cache together.

        Beams advance in lockstep, and n samples are counted the same way (vLLM
        schedules a request's sequences together): width x (prompt + max_tokens)
        tokens, in blocks, must fit the whole cache, or the request would wait forever.
        """
        start = len(self._decoder_start(params)) if self.loaded.is_encoder_decoder else prompt_len
        tokens = start + params.max_tokens
        per_seq = -(-tokens // self.config.block_size)
        capacity = self.block_manager.num_blocks
        if width * per_seq > capacity:
            name = "best_of" if params.use_beam_search else "n"
            raise RequestError(
                f"{name}={width} sequences of up to {tokens} tokens need {width * per_seq} KV-cache blocks; "
                f"the cache holds {capacity} ({capacity * self.config.block_size} tokens). Reduce {name} or "
                "max_tokens.", code="context_length_exceeded", param="max_tokens")

    def _check_encoder_input(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        limit = self.loaded.max_model_len
        if len(prompt_token_ids) > limit:
            raise RequestError(f"This model's maximum input length is {limit} tokens; the input has "
                               f"{len(prompt_token_ids)}.", code="context_length_exceeded", param="messages")
        start = len(self._decoder_start(params))
        if params.max_tokens + start > self.max_model_len:
            raise RequestError(f"max_tokens must be at most {self.max_model_len - start} for this model",
                               code="context_length_exceeded", param="max_tokens")

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request now and return its blocks; its final output has finish_reason 'abort'."""
        req = self.requests.get(request_id)
        if req is None:
            return None
        try:
            for seq in req.seqs:
                if not seq.finished:
                    self._finish(req, seq, FinishReason.ABORT)
            return self._report(req)
        except Exception as err:  # an abort that breaks half way still frees everything
            return self._fail_requests([req], "abort", err)[0]

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    # -- the step -----------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """One iteration. An error fails the requests it belongs to and the step goes on;
        only an unrecoverable one (a poisoned device) propagates."""
        try:
            out = self.scheduler.schedule()
        except Exception as err:  # the scheduler's state is suspect: fail everyone it holds, keep serving
            return self._fail_requests(list(self.requests.values()), "scheduling", err)
        if out.empty:
            return []
        now = time.monotonic()
        for chunk in out.prefills:
            req = self.requests[chunk.seq.request_id]
            req.times.scheduled = req.times.scheduled or now
        try:
            logits, seqs = self.runner.run(out)
        except Exception as err:  # nothing of this step reached the cache's prefix index: fail its requests
            return self._fail_requests(self._requests_in(out), "the forward pass", err)
        self.scheduler.computed(out)
        failed = self._sample_plain(logits, seqs)
        for i, seq in enumerate(seqs):
            if seq.params.use_beam_search and seq.request_id in self.requests:
                self._isolated(seq.request_id, "beam search", self._beam_row, seq, logits[i], failed=failed)
        touched = {s.request_id for s in seqs} - set(failed)
        return list(failed.values()) + [self._report(self.requests[r]) for r in touched
                                        if r in self.requests and self._reportable(r)]

    def _sample_plain(self, logits: torch.Tensor, seqs: list[Sequence]) -> dict[str, RequestOutput]:
        """Sample and append for the non-beam rows; returns the outputs of requests that failed."""
        failed: dict[str, RequestOutput] = {}
        plain = [i for i, s in enumerate(seqs) if not s.params.use_beam_search]
        if not plain:
            return failed
        try:
            rows = logits if len(plain) == len(seqs) else logits[plain]  # a list index would copy every row
            result = sample(rows, [seqs[i] for i in plain], self.rng, self.eos_ids, self.sampling_staging)
            picks = list(zip(plain, result.token_ids, result.logprobs))
        except Exception as err:
            if is_unrecoverable(err):
                raise
            picks = self._sample_one_by_one(logits, seqs, plain, failed)
        for i, token, lp in picks:
            seq = seqs[i]
            if seq.request_id in self.requests and not seq.finished:
                self._isolated(seq.request_id, "detokenisation", self._append, seq, token, lp, failed=failed)
        return failed

    def _sample_one_by_one(self, logits, seqs, rows, failed) -> list:
        """The batch failed to sample: find the rows that fail alone and fail their requests."""
        picks = []
        for i in rows:
            seq = seqs[i]
            if seq.request_id in failed:
                continue
            result = self._isolated(seq.request_id, "sampling", sample, logits[i:i + 1], [seq], self.rng,
                                    self.eos_ids, failed=failed)
            if result is not None:
                picks.append((i, result.token_ids[0], result.logprobs[0]))
        return picks

    def _isolated(self, request_id: str, stage: str, fn, *args, failed: dict[str, RequestOutput]):
        """``fn(*args)``; if it raises, fail request ``request_id`` (recorded in ``failed``) and return None."""
        try:
            return fn(*args)
        except Exception as err:  # _fail_requests re-raises what is unrecoverable
            failed.update((o.request_id, o) for o in self._fail_requests([self.requests[request_id]], stage, err))
            return None

    def _requests_in(self, out) -> list[Request]:
        ids = dict.fromkeys([c.seq.request_id for c in out.prefills] + [s.request_id for s in out.decodes])
        return [self.requests[r] for r in ids if r in self.requests]

    def _fail_requests(self, reqs: list[Request], stage: str, err: Exception) -> list[RequestOutput]:
        """Fail ``reqs`` (free their blocks, forget them) because of ``err``; re-raise it if unrecoverable."""
        if is_unrecoverable(err):
            raise err
        client = isinstance(err, GrammarError)  # what the request asked cannot be done: not a server fault
        log.log(logging.WARNING if client else logging.ERROR, "%s failed for %d request(s) %s", stage, len(reqs),
                ", ".join(r.request_id for r in reqs), exc_info=None if client else err)
        outputs = []
        for req in reqs:
            for seq in req.seqs:
                if not seq.finished:
                    self.scheduler.finish(seq, FinishReason.ERROR)
                    self.runner.release(seq)
            self.requests.pop(req.request_id, None)
            self.counters.failed += 1
            message = f"request {req.request_id} failed during {stage}: {describe(err)}"
            outputs.append(RequestOutput(req.request_id, req.prompt_token_ids, [], True, times=req.times,
                                         num_generated_tokens=sum(len(s.output_token_ids) for s in req.seqs),
                                         error=message, client_error=client,
                                         error_param=getattr(err, "param", None) if client else None))
        return outputs

    def _reportable(self, request_id: str) -> bool:
        req = self.requests[request_id]
        return req.beam is None or req.finished  # beam search reports once, at the end

    # -- beam search ----------------------------------------------------------------------------
    def _beam_row(self, seq: Sequence, logits: torch.Tensor) -> None:
        req = self.requests[seq.request_id]
        state = req.beam
        row = logits.float().log_softmax(-1)
        banned = banned_tokens(seq, self.eos_ids)
        if banned:  # bad words and min_tokens after the log-softmax, as transformers' processors apply them
            row[list(banned)] = float("-inf")
        state.rows[seq.seq_id] = row
        seq.paused = True
        live = [s for s in req.seqs if not s.finished]
        if state.ready(live):
            self._beam_advance(req, live)

    def _beam_advance(self, req: Request, live: list[Sequence]) -> None:
        state = req.beam
        now = time.monotonic()
        req.times.first_token = req.times.first_token or now
        req.times.last_token = now
        chosen = state.advance(live)
        if state.done:
            self._beam_finish(req, live)
            return
        # fork duplicates first, from the parents' state before any of them grows
        used: set[int] = set()
        assigned = []
        for c in chosen:
            seq = c.parent if c.parent.seq_id not in used else self._fork(req, c.parent)
            used.add(c.parent.seq_id)
            assigned.append((seq, c))
        beams, scores = [], {}
        for seq, c in assigned:
            seq.output_token_ids.append(c.token)
            seq.paused = False
            scores[seq.seq_id] = c.logprob
            beams.append(seq)
        self.counters.generation_tokens += len(beams)
        for seq in live:
            if seq.seq_id not in scores:  # a beam nobody continues: its blocks go back
                self.scheduler.finish(seq, FinishReason.STOP)
                self.runner.release(seq)
        state.scores = scores

    def _fork(self, req: Request, parent: Sequence) -> Sequence:
        child = Sequence(req.request_id, len(req.seqs), list(parent.prompt_token_ids), parent.params,
                         parent.arrival_time, output_token_ids=list(parent.output_token_ids),
                         encoder_token_ids=parent.encoder_token_ids)
        if parent.encoder_token_ids is not None:
            self.runner.share_cross(parent, child)
        if parent.block_table:
            self.block_manager.fork(parent, child)
            self.scheduler.add_running(child)
        else:  # the parent was preempted: the child recomputes too
            self.scheduler.add(child)
        req.seqs.append(child)
        return child

    def _beam_finish(self, req: Request, live: list[Sequence]) -> None:
        for seq in live:
            self.scheduler.finish(seq, FinishReason.STOP)
            self.runner.release(seq)
        tok = self.loaded.tokenizer
        for i, hyp in enumerate(req.beam.best(req.params.n)):
            text = tok.decode([t for t in hyp.token_ids if t not in req.beam.stop_ids],
                              skip_special_tokens=req.params.skip_special_tokens)
            reason = FinishReason.STOP if hyp.ended else FinishReason.LENGTH
            req.pending[-1 - i] = CompletionOutput(i, text, hyp.token_ids, None, reason.value)
            self.counters.finished[reason.value] = self.counters.finished.get(reason.value, 0) + 1

    def _append(self, seq: Sequence, token: int, logprob) -> None:
        req = self.requests[seq.request_id]
        now = time.monotonic()
        req.times.first_token = req.times.first_token or now
        req.times.last_token = now
        seq.output_token_ids.append(token)
        self.counters.generation_tokens += 1
        news = req.pending.setdefault(seq.seq_id, CompletionOutput.empty(seq.index, seq.params.logprobs is not None))
        news.token_ids.append(token)
        if logprob is not None:
            news.logprobs.append(TokenLogprob(token, logprob[0], logprob[1]))
        reason = self._stop_reason(seq, token)
        if seq.grammar is not None and reason is None:
            if not seq.grammar.accept(token):  # the mask allows only what the grammar accepts
                raise RuntimeError(f"token {token} was sampled against the request's grammar")
            if seq.grammar.finished:
                reason = FinishReason.STOP, None
        text = req.texts[seq.seq_id]
        if reason is None or reason[0] is FinishReason.LENGTH:  # stop/EOS tokens add no text
            if text.add_token(token):
                reason = (FinishReason.STOP, text.stop_reason)
        if reason is not None:
            self._finish(req, seq, reason[0], reason[1])

    def _stop_reason(self, seq: Sequence, token: int):
        """(reason, stop token or None) when this token ends the sequence."""
        p = seq.params
        if token in p.stop_token_ids:
            return FinishReason.STOP, token
        if token in self.eos_ids and not p.ignore_eos:
            return FinishReason.STOP, None  # as vLLM: stop_reason names stop strings / stop tokens only
        if len(seq.output_token_ids) >= p.max_tokens or len(seq) >= self.max_model_len:
            return FinishReason.LENGTH, None
        return None

    def _finish(self, req: Request, seq: Sequence, reason: FinishReason, stop=None) -> None:
        self.scheduler.finish(seq, reason)
        self.runner.release(seq)
        text = req.texts[seq.seq_id]
        if reason is not FinishReason.STOP or text.stop_reason is None:
            text.finish()
        news = req.pending.setdefault(seq.seq_id, CompletionOutput.empty(seq.index, seq.params.logprobs is not None))
        news.finish_reason = reason.value
        news.stop_reason = text.stop_reason if text.stop_reason is not None else stop
        self.counters.finished[reason.value] = self.counters.finished.get(reason.value, 0) + 1

    def _report(self, req: Request) -> RequestOutput:
        outputs = [req.pending.pop(k) for k in sorted(k for k in req.pending if k < 0)][::-1]  # beam results
        for seq in req.seqs:
            news = req.pending.pop(seq.seq_id, None)
            if news is None:
                continue
            news.text = req.texts[seq.seq_id].take(final=seq.finished)
            outputs.append(news)
        finished = req.finished
        if finished:
            del self.requests[req.request_id]
        cached = max((s.num_cached_tokens for s in req.seqs), default=0)
        generated = sum(len(s.output_token_ids) for s in req.seqs)
        prompt_lps = self._prompt_logprobs_ready(req, finished)
        return RequestOutput(req.request_id, req.prompt_token_ids, outputs, finished, cached, req.times, generated,
                             prompt_logprobs=prompt_lps)

    @staticmethod
    def _prompt_logprobs_ready(req: Request, finished: bool) -> list | None:
        """A request's prompt logprobs, once: in the first report after its prompt is computed (a stream can
        send them, with the echoed prompt, before the first generated token)."""
        if req.params.prompt_logprobs is None or req.prompt_logprobs_sent:
            return None
        computed = req.seqs[0].prompt_logprobs
        if not finished and len(computed) < len(req.prompt_token_ids) - 1:
            return None
        req.prompt_logprobs_sent = True
        return computed

    # -- introspection ------------------------------------------------------------------------
    def stats(self) -> dict:
        bm = self.block_manager
        return {
            "num_requests_running": len({s.request_id for s in self.scheduler.running}),
            "num_requests_waiting": len({s.request_id for s in self.scheduler.waiting} - {s.request_id for s in self.scheduler.running}),
            "kv_cache_usage_perc": bm.usage,
            "num_free_blocks": bm.num_free_blocks,
            "num_blocks": bm.num_blocks,
            "num_preemptions": self.scheduler.num_preemptions,
            "prefix_cache_queries": bm.stats.queries,
            "prefix_cache_hits": bm.stats.hits,
            "prompt_tokens": self.counters.prompt_tokens,
            "generation_tokens": self.counters.generation_tokens,
        }

    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]) -> list[list[CompletionOutput]]:
        """Run prompts to completion (offline use and tests): per prompt, per sequence the joined output."""
        params = params if isinstance(params, list) else [params] * len(prompts)
        ids = [f"offline-{time.monotonic_ns()}-{i}" for i in range(len(prompts))]
        for rid, prompt, p in zip(ids, prompts, params):
            self.add_request(rid, prompt, p)
        joined: dict[str, dict[int, CompletionOutput]] = {rid: {} for rid in ids}
        errors: list[RequestFailed] = []
        while self.has_unfinished():
            for out in self.step():
                if out.error is not None:
                    errors.append(RequestFailed(out.request_id, out.error, out.error_param, out.client_error))
                for o in out.outputs:
                    acc = joined[out.request_id].setdefault(o.index, CompletionOutput.empty(o.index, o.logprobs is not None))
                    acc.text += o.text
                    acc.token_ids += o.token_ids
                    if o.logprobs is not None:
                        acc.logprobs += o.logprobs
                    acc.finish_reason, acc.stop_reason = o.finish_reason, o.stop_reason
        if errors:  # the others ran to completion first
            raise errors[0]
        return [[joined[rid][i] for i in sorted(joined[rid])] for rid in ids]
