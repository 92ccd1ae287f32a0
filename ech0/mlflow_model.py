"""The trained model as an MLflow pyfunc: prompts in, completions out, or an OpenAI-style chat, fully offline.

    from ech0.mlflow_model import log_pyfunc, save_pyfunc
    log_pyfunc(tracker, run_dir / "model", base_path)        # training: into the open run, at `model`
    save_pyfunc(dest, run_dir / "model", base_path)          # a package folder, no tracking store

    model = mlflow.pyfunc.load_model("models:/ech0@production")
    model.predict(pd.DataFrame({"prompt": ["What color is snow?"]}), params={"max_new_tokens": 32})  # [text]
    model.predict({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 32, "temperature": 0})
    # -> {"id", "object": "chat.completion", "created", "model",
    #     "choices": [{"index": 0, "message": {"role": "assistant", "content"}, "finish_reason"}], "usage": {...}}

Both build the same model (:func:`pyfunc_spec`): MLflow's "models from code" — the model is the
file ``mlflow_model_code.py``, which calls ``mlflow.models.set_model(Ech0Generator())``, not a
pickle — over artifacts holding the run's ``model/`` folder (LoRA adapter or full weights,
tokenizer with its chat template, ``ech0_model.json``). An adapter refers to its base by folder and
content hash, verified at load (:func:`ech0.model_folder.verified_base`), instead of carrying a copy;
:func:`save_pyfunc` (``ech0 registry package``) copies the base in for a self-contained folder. The adapter
is loaded with peft explicitly (:func:`ech0.model_folder.load_trained`) and tests check the
output equals the in-process fine-tuned model's.

Chat is a plain ``PythonModel`` (not the deprecated ``ChatModel``, whose fixed signature cannot
also take the ``prompt`` frame): the signature declares the chat-completions request fields
(``messages``, ``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``) as optional input
columns beside ``prompt``, so ``mlflow models serve`` takes a top-level ``messages`` body on its
unified-LLM path, and the same dict works in Python. The answer is built with MLflow's own
``mlflow.types.llm.ChatCompletionResponse``. Bad requests raise ``MlflowException``
(``INVALID_PARAMETER_VALUE``: HTTP 400 when served) with a one-line reason.

Limits (README "Serving under load") are checked on the raw request, cheapest first, before anything
is tokenised or generated: prompts per request, ``max_new_tokens``/``max_tokens``, characters, then
tokens. They come from the model's MLflow ``model_config``; ``mlflow.pyfunc.load_model(uri,
model_config={...})`` overrides them in Python, ``MLFLOW_PYFUNC_INFERENCE_CONFIG='{"max_batch": 8}' mlflow
models serve ...`` when served, and a refusal names the key to change:

- ``max_batch`` (:data:`MAX_BATCH`): prompts in one request;
- ``max_tokens_cap`` (:data:`MAX_TOKENS_CAP`): ``max_tokens`` / ``max_new_tokens`` of one request;
- ``max_prompt_chars`` (default: ``max_prompt_tokens`` x the longest token in the vocabulary, so that
  no prompt it refuses could have fitted): characters of one prompt or of a conversation's contents;
- ``max_prompt_tokens`` (default and ceiling: the model's ``max_position_embeddings`` - 1);
- ``max_seconds`` (:data:`MAX_SECONDS`): queueing plus generation of one request; past it the request
  is answered 504 and generation stops at the next token, not minutes later.

Requests generate one at a time (a lock): on CPU torch already spreads one generation over every core,
a seeded sample stays repeatable under concurrency (the seed is torch's global RNG), and memory holds
one request's KV cache, not one per waiting client.
"""

from __future__ import annotations

import math
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import DEADLINE_EXCEEDED

from ech0.model_folder import is_adapter, load_trained

MODEL_CODE = Path(__file__).with_name("mlflow_model_code.py")
DEFAULT_MAX_NEW_TOKENS = 64
MAX_TOKENS_CAP = 4096  # the most tokens one answer may ask for (model_config ``max_tokens_cap``)
# Prompts in one request (model_config ``max_batch``): four generation batches of GENERATION_BATCH. Unlimited,
# one request of 10,000 prompts kept the server computing at full CPU for 13+ minutes (issue #15).
MAX_BATCH = 64
GENERATION_BATCH = 16  # prompts generated together (ech0.generation's default batch)
# `mlflow models serve --timeout`'s default: past it the server has answered 504 and nobody reads the
# answer, so generation stops there (model_config ``max_seconds``; raise both together).
MAX_SECONDS = 60
MAX_STOP = 4  # stop strings per request, as OpenAI's API


def _bad(reason: str) -> MlflowException:
    """A request error: HTTP 400 when served, ``MlflowException`` in Python."""
    return MlflowException.invalid_parameter_value(reason)


def _over(reason: str, key: str) -> MlflowException:
    """A request over a limit: the one-line reason, then which model_config key to change and how."""
    return _bad(f"{reason} (the limit is model_config {key}: MLFLOW_PYFUNC_INFERENCE_CONFIG='{{\"{key}\": N}}' "
                f"mlflow models serve ..., or mlflow.pyfunc.load_model(uri, model_config={{...}}))")


@dataclass
class ChatRequest:
    """One chat-completions request, validated: what :func:`ech0.generation.complete` is given."""

    messages: list[dict]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] | None = None


def _given(row: dict, key: str, default=None):
    """``row[key]``, or ``default`` where it is absent, null or NaN (an unset optional column)."""
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return default
    return value


def _number(name: str, value, lo: float, hi: float, integer: bool = False, expected: str = ""):
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not lo <= value <= hi:
        expected = expected or f"{'an integer' if integer else 'a number'} from {lo} to {hi}"
        raise _bad(f"'{name}' must be {expected}, got {value!r}")
    return value


def _messages(value) -> list[dict]:
    from ech0.chat import ROLES

    if hasattr(value, "tolist"):  # a numpy array, as a frame column may hold it
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not value:
        raise _bad("'messages' must be a non-empty list of {role, content} turns")
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise _bad(f"messages[{i}] must be a {{role, content}} object, got {type(m).__name__}")
        if m.get("role") not in ROLES:
            raise _bad(f"messages[{i}]: unknown role {m.get('role')!r} (expected one of {', '.join(ROLES)})")
        if not isinstance(m.get("content"), str):
            raise _bad(f"messages[{i}]: 'content' must be a string, got {type(m.get('content')).__name__}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _stop(value) -> list[str] | None:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, str):
        value = [value]
    if value is not None and (not isinstance(value, list) or len(value) > MAX_STOP
                              or not all(isinstance(s, str) and s for s in value)):
        raise _bad(f"'stop' must be a list of at most {MAX_STOP} non-empty strings")
    return value or None


def chat_request(row: dict, default_max_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 max_tokens_cap: int = MAX_TOKENS_CAP) -> ChatRequest:
    """Validate an OpenAI chat-completions request (a dict); ``MlflowException`` with one line if bad."""
    seed = _given(row, "seed")
    return ChatRequest(
        messages=_messages(row.get("messages")),
        max_tokens=_number("max_tokens", _given(row, "max_tokens", default_max_tokens), 1, max_tokens_cap,
                           integer=True),
        temperature=float(_number("temperature", _given(row, "temperature", 0.0), 0, 2)),
        top_p=float(_number("top_p", _given(row, "top_p", 1.0), 1e-9, 1, expected="a number above 0, at most 1")),
        seed=None if seed is None else _number("seed", seed, 0, 2**32 - 1, integer=True),
        stop=_stop(_given(row, "stop")))


def chat_response(completion, model: str) -> dict:
    """An OpenAI chat completion (MLflow's ``ChatCompletionResponse``) for one :class:`ech0.generation.Completion`."""
    from mlflow.types.llm import ChatChoice, ChatCompletionResponse, ChatMessage, TokenUsageStats

    c = completion
    return ChatCompletionResponse(
        id=f"chatcmpl-{uuid.uuid4().hex}", model=model,
        choices=[ChatChoice(index=0, message=ChatMessage(role="assistant", content=c.text),
                            finish_reason=c.finish_reason)],
        usage=TokenUsageStats(prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens,
                              total_tokens=c.prompt_tokens + c.completion_tokens)).to_dict()


def context_length(model, default: int = 2048) -> int:
    """The most positions (prompt + answer tokens) the model takes."""
    config = model.config
    return int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or default)


def _positive(config: dict, name: str, default: int) -> int:
    value = config.get(name) or default  # 0 / absent: the default
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"model_config {name}={value!r}: expected a positive integer")
    return value


def longest_token(tokenizer) -> int:
    """Characters of the vocabulary's longest token: no text longer than N times this is under N tokens."""
    return max(map(len, tokenizer.get_vocab()), default=1)


class Ech0Generator(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.model, self.tokenizer, self.meta = load_trained(context.artifacts["model"], context.artifacts.get("base"))
        self.max_positions = context_length(self.model)
        ceiling = self.max_positions - 1  # room for at least one answer token
        config = getattr(context, "model_config", None) or {}
        self.max_prompt_tokens = min(_positive(config, "max_prompt_tokens", ceiling), ceiling)
        # 10 characters a token for the tiny test model (20,470 in all), 81 for SmolLM2 (663,471).
        self.max_prompt_chars = _positive(config, "max_prompt_chars",
                                          self.max_prompt_tokens * longest_token(self.tokenizer))
        self.max_batch = _positive(config, "max_batch", MAX_BATCH)
        self.max_tokens_cap = _positive(config, "max_tokens_cap", MAX_TOKENS_CAP)
        self.max_seconds = _positive(config, "max_seconds", MAX_SECONDS)
        self._lock = threading.Lock()  # one generation at a time (module docstring)

    # MLflow hands predict() a frame (the signature's columns: `prompt` rows from served
    # `dataframe_split`/`dataframe_records`, or one chat request's row from a `messages` body).
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str] | dict:
        deadline = time.monotonic() + self.max_seconds
        params = params or {}
        frame = pd.DataFrame([model_input]) if isinstance(model_input, dict) else model_input
        if "messages" in frame.columns:
            return self._chat(frame, params.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS), deadline)
        return self._prompts(frame, params.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS), deadline)

    def _tokens_cap(self, name: str, value) -> int:
        """``value`` as a token count from 1 to ``max_tokens_cap`` (the limit named when it is over)."""
        if isinstance(value, int) and not isinstance(value, bool) and value > self.max_tokens_cap:
            raise _over(f"'{name}' must be an integer from 1 to {self.max_tokens_cap}, got {value}", "max_tokens_cap")
        return _number(name, value, 1, self.max_tokens_cap, integer=True)

    def _check_chars(self, n: int, what: str) -> None:
        if n > self.max_prompt_chars:
            raise _over(f"{what} is {n} characters; this model takes at most {self.max_prompt_chars}",
                        "max_prompt_chars")

    def _check_tokens(self, n: int, what: str) -> None:
        if n > self.max_prompt_tokens:
            raise _over(f"{what} is {n} tokens; this model takes at most {self.max_prompt_tokens}",
                        "max_prompt_tokens")

    def _prompts(self, frame: pd.DataFrame, max_new_tokens, deadline: float) -> list[str]:
        from ech0.chat import prompt_ids

        if "prompt" not in frame.columns:
            raise _bad("input needs a 'prompt' column (or a chat request's 'messages')")
        if len(frame) > self.max_batch:
            raise _over(f"the request has {len(frame)} prompts; this model takes at most {self.max_batch} at once",
                        "max_batch")
        max_new_tokens = self._tokens_cap("max_new_tokens", max_new_tokens)
        prompts = frame["prompt"].tolist()
        if not all(isinstance(p, str) for p in prompts):
            raise _bad("every prompt must be a string")
        for i, p in enumerate(prompts):
            self._check_chars(len(p), f"prompt {i}")
        lengths = [len(prompt_ids(self.tokenizer, p)) for p in prompts]
        for i, n in enumerate(lengths):
            self._check_tokens(n, f"prompt {i}")
        room = self.max_positions - max(lengths, default=0)
        done = self._generate(prompts, lengths, deadline, max_new_tokens=min(max_new_tokens, room))
        return [c.text for c in done]

    def _chat(self, frame: pd.DataFrame, default_max_tokens, deadline: float) -> dict:
        from ech0.chat import TemplateError, prompt_ids

        rows = frame.to_dict("records")  # native Python values, not numpy scalars
        if len(rows) != 1 or _given(rows[0], "prompt") is not None:
            raise _bad("a chat request is one conversation: a single 'messages' list, without 'prompt'")
        row = rows[0]
        self._tokens_cap("max_tokens", _given(row, "max_tokens", default_max_tokens))
        messages = row.get("messages")
        if hasattr(messages, "__len__") and len(messages) > self.max_prompt_tokens:  # a turn is at least a token
            raise _over(f"the conversation has {len(messages)} turns; this model takes at most "
                        f"{self.max_prompt_tokens} tokens", "max_prompt_tokens")
        req = chat_request(row, default_max_tokens, self.max_tokens_cap)
        self._check_chars(sum(len(m["content"]) for m in req.messages), "the conversation")
        try:
            n = len(prompt_ids(self.tokenizer, req.messages))
        except TemplateError as e:
            raise _bad(str(e)) from None
        self._check_tokens(n, "the conversation")
        done = self._generate([req.messages], [n], deadline, max_new_tokens=min(req.max_tokens, self.max_positions - n),
                              temperature=req.temperature, top_p=req.top_p, seed=req.seed, stop=req.stop)[0]
        return chat_response(done, f"ech0-{self.meta.get('run_id') or 'model'}")

    def _generate(self, requests: list, lengths: list[int], deadline: float, **sampling) -> list:
        """:func:`ech0.generation.complete` on ``requests``, one request at a time, ended at ``deadline``.

        The batches are complete()'s own (shortest first, GENERATION_BATCH a batch), handed over one by
        one so that each ``generate`` gets the time left (transformers' ``max_time``, checked every token).
        """
        from ech0.generation import complete

        order = sorted(range(len(requests)), key=lambda i: lengths[i])
        out: list = [None] * len(requests)
        config = self.model.generation_config  # peft's wrapper forwards to the base model's
        with self._lock:
            try:
                for s in range(0, len(order), GENERATION_BATCH):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    config.max_time = left
                    idx = order[s:s + GENERATION_BATCH]
                    for i, c in zip(idx, complete(self.model, self.tokenizer, [requests[i] for i in idx],
                                                  batch_size=GENERATION_BATCH, **sampling)):
                        out[i] = c
            finally:
                config.max_time = None
        if time.monotonic() >= deadline:
            raise MlflowException(f"the request took over {self.max_seconds} s (waiting and generating) and was "
                                  f"stopped (the limit is model_config max_seconds)", error_code=DEADLINE_EXCEEDED)
        return out


def signature():
    """``prompt`` rows (param ``max_new_tokens``) or one chat-completions request, as optional columns."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Object, ParamSchema, ParamSpec, Property, Schema

    turn = Object([Property("role", "string"), Property("content", "string")])
    chat = [ColSpec(Array(turn), "messages", required=False), ColSpec("long", "max_tokens", required=False),
            ColSpec("double", "temperature", required=False), ColSpec("double", "top_p", required=False),
            ColSpec("long", "seed", required=False), ColSpec(Array("string"), "stop", required=False)]
    return ModelSignature(inputs=Schema([ColSpec("string", "prompt", required=False), *chat]),
                          outputs=Schema([ColSpec("string")]),
                          params=ParamSchema([ParamSpec("max_new_tokens", "long", DEFAULT_MAX_NEW_TOKENS)]))


def pip_requirements() -> list[str]:
    """Pinned to what trained the model; passed explicitly so MLflow never imports torchvision to guess."""
    from importlib.metadata import version

    pins = [f"{p}=={version(p)}" for p in ("mlflow", "transformers", "peft", "tokenizers", "safetensors", "pandas")]
    import torch

    return pins + [f"torch=={torch.__version__.split('+')[0]}"]


def pyfunc_spec(model_dir: str | os.PathLike, base_path: str | None, embed_base: bool = False) -> dict:
    """The keyword arguments of ``mlflow.pyfunc.save_model`` / ``log_model`` for a trained model folder.

    An adapter refers to its base (``ech0_model.json``: the folder, its source and its content hash,
    verified when the model loads) instead of carrying a copy: a run on a 7B base would otherwise log
    14 GB each time. ``embed_base`` copies a local base in (artifact ``base``): self-contained packages.
    """
    import ech0

    artifacts = {"model": str(model_dir)}
    if embed_base and is_adapter(model_dir) and base_path and Path(base_path).is_dir():
        artifacts["base"] = str(base_path)
    return {"python_model": str(MODEL_CODE), "artifacts": artifacts, "signature": signature(),
            "pip_requirements": pip_requirements(), "code_paths": [str(Path(ech0.__file__).parent)],
            # the serving limits; MLflow lets a load override only keys logged here (0: from the model:
            # max_prompt_tokens its context - 1, max_prompt_chars that times its longest token)
            "model_config": {"max_prompt_tokens": 0, "max_prompt_chars": 0, "max_batch": MAX_BATCH,
                             "max_tokens_cap": MAX_TOKENS_CAP, "max_seconds": MAX_SECONDS}}


def log_pyfunc(tracker, model_dir: str | os.PathLike, base_path: str | None, name: str = "model", step: int = 0,
               metrics: dict[str, float] | None = None, tags: dict | None = None):
    """Log the model into ``tracker``'s open run (:meth:`ech0.tracking.Tracker.log_model`) as ``name`` at ``step``,
    with ``metrics`` linked to it and ``tags`` on it."""
    return tracker.log_model(**pyfunc_spec(model_dir, base_path), name=name, step=step, metrics=metrics, tags=tags)


def save_pyfunc(path: str | os.PathLike, model_dir: str | os.PathLike, base_path: str | None) -> None:
    """Write the same model, with its base inside, to the folder ``path`` (which must not exist yet)."""
    mlflow.pyfunc.save_model(str(path), **pyfunc_spec(model_dir, base_path, embed_base=True))
