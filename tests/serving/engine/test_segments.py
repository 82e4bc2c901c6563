"""Tokenizing chats from kept pieces (serving/engine/segments.py) on real tokenizers: the bundled
SmolLM2's, and small ones trained here to show where pieces would differ (then none is used)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.bench.agent_turns import AgentLoopConfig, Conversation, Turn, tools
from serving.engine.segments import for_tokenizer

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def tokenizer(ready_models_dir: Path) -> Any:
    from transformers import AutoTokenizer

    from pipelines.models.store import ModelStore

    return AutoTokenizer.from_pretrained(str(ModelStore(ready_models_dir).resolve(MODEL)))


def test_an_agent_conversation_tokenizes_as_the_template_does(tokenizer: Any) -> None:
    encoder = for_tokenizer(tokenizer)
    assert encoder is not None
    conv = Conversation(AgentLoopConfig(turns=8, history=50, memory_bytes=0, disk_bytes=0))
    for i in range(8):
        messages = conv.messages()
        ids = tokenizer.apply_chat_template(messages, tools=tools(), add_generation_prompt=True)
        text = tokenizer.apply_chat_template(
            messages, tools=tools(), add_generation_prompt=True, tokenize=False
        )
        assert encoder.encode(text) == list(getattr(ids, "input_ids", ids))
        reply = f"Step {i}: I read <|im_end|> the file and then edit it.\n"
        conv.record(messages, Turn(0, 0, 0, {"role": "assistant", "content": reply}, []))
    # after the first turns only the new pieces are tokenized
    assert encoder.hits > 3 * encoder.misses


pieces = st.one_of(
    st.sampled_from(["<|im_start|>", "<|im_end|>", "<|endoftext|>", "\n", " ", "  ", "user"]),
    st.text(max_size=12),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(parts=st.lists(pieces, max_size=12))
def test_any_text_tokenizes_as_the_tokenizer_does(tokenizer: Any, parts: list[str]) -> None:
    encoder = for_tokenizer(tokenizer)
    assert encoder is not None
    text = "".join(parts)
    assert encoder.encode(text) == tokenizer.encode(text, add_special_tokens=False)


def trained(pre_tokenizer: Any, special: Any) -> Any:
    """A small BPE tokenizer trained here, with one special token, as transformers wraps it."""
    from tokenizers import Tokenizer, models, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizer
    corpus = ["word0 next 0 word1 next 1 end", "the engine reads the file", "a b c"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=120, special_tokens=["[UNK]"]))
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok)
    wrapped.add_special_tokens({"additional_special_tokens": [special]})
    return wrapped


def test_a_tokenizer_whose_pieces_differ_is_encoded_whole() -> None:
    from tokenizers import AddedToken, pre_tokenizers

    plain = trained(pre_tokenizers.Whitespace(), AddedToken("<|x|>", special=True))
    assert for_tokenizer(plain) is not None
    # Metaspace prepends "▁" to the input's first piece only: pieces alone would all get one
    first = pre_tokenizers.Metaspace(prepend_scheme="first")
    assert for_tokenizer(trained(first, AddedToken("<|x|>", special=True))) is None
    # a special token that takes the spaces around it matches differently from a plain split
    stripping = AddedToken("<|x|>", special=True, lstrip=True)
    assert for_tokenizer(trained(pre_tokenizers.Whitespace(), stripping)) is None


def test_kept_pieces_stay_within_their_characters(tokenizer: Any) -> None:
    from serving.engine.segments import SegmentEncoder

    encoder = SegmentEncoder(tokenizer, ["<|im_start|>", "<|im_end|>"], kept_chars=4_000)
    for i in range(40):  # forty different documents of ~400 characters
        text = f"<|im_start|>user\ndocument {i}: " + "lorem ipsum dolor " * 22 + "<|im_end|>"
        assert encoder.encode(text) == tokenizer.encode(text, add_special_tokens=False)
        assert encoder._chars == sum(map(len, encoder._kept)) <= 4_000
    huge = "<|im_start|>" + "a pasted file " * 100  # over a quarter of the budget: not kept
    assert encoder.encode(huge) == tokenizer.encode(huge, add_special_tokens=False)
    assert not any(len(p) > 1_000 for p in encoder._kept)


def test_pieces_seeded_from_a_cached_prefix_are_the_tokenizers(tokenizer: Any) -> None:
    """A restarted engine seeds the pieces of the prefixes it read at load: the next turn of
    that conversation then encodes only what is new, to the same ids; a prefix cut mid-piece
    keeps nothing wrong."""
    conv = Conversation(AgentLoopConfig(turns=4, history=50, memory_bytes=0, disk_bytes=0))
    for i in range(3):
        messages = conv.messages()
        reply = f"Step {i}: I read the file and then edit it."
        conv.record(messages, Turn(0, 0, 0, {"role": "assistant", "content": reply}, []))
    messages = conv.messages()

    def ids(*, generation_prompt: bool) -> list[int]:
        out = tokenizer.apply_chat_template(
            messages, tools=tools(), add_generation_prompt=generation_prompt
        )
        return list(getattr(out, "input_ids", out))

    cached = ids(generation_prompt=False)  # last turn's state, as the disk tier keeps it
    encoder = for_tokenizer(tokenizer)
    assert encoder is not None
    added = encoder.seed(cached[:-7])  # cut inside the last message
    assert added > 10
    for piece, piece_ids in encoder._kept.items():
        assert piece_ids == tokenizer.encode(piece, add_special_tokens=False)
    text = tokenizer.apply_chat_template(
        messages, tools=tools(), add_generation_prompt=True, tokenize=False
    )
    assert encoder.encode(text) == ids(generation_prompt=True)
    assert encoder.misses == 2, encoder.misses  # the cut message, and "assistant\n"
