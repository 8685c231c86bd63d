"""ChatML rendering, history fitting and the `mpt chat` loop."""

import pytest

from mpt.infer.chat import Message, fit_history, render, render_chatml

CONVERSATIONS = [
    [Message("user", "Hi!")],
    [Message("system", "You are terse."), Message("user", "Hi!")],
    [Message("system", "Be kind."), Message("user", "2+2?"), Message("assistant", "4"),
     Message("user", "And\nmultiline 日本?")],
    [Message("user", "")],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_chatml_equals_apply_chat_template(llm, messages):
    dicts = [{"role": m.role, "content": m.content} for m in messages]
    expected = llm.tokenizer.apply_chat_template(dicts, tokenize=False, add_generation_prompt=True)
    assert render_chatml(messages) == expected == render(messages, llm.tokenizer)
    assert llm.encode(render(messages)) == llm.tokenizer.apply_chat_template(dicts, add_generation_prompt=True,
                                                                            return_dict=False)


def test_bad_role_is_named():
    with pytest.raises(ValueError, match="'robot'"):
        render([Message("robot", "hi")])


def test_fit_history_drops_oldest_turns_but_keeps_system_and_last():
    msgs = [Message("system", "S")] + [Message("user" if i % 2 == 0 else "assistant", f"turn {i} " * 5)
                                       for i in range(7)]
    count = len  # one "token" per character
    kept, dropped = fit_history(msgs, count, budget=len(render_chatml(msgs[:1] + msgs[-3:])))
    assert dropped == 4 and kept == msgs[:1] + msgs[-3:]
    kept, dropped = fit_history(msgs, count, budget=len(render_chatml(msgs[:1] + msgs[-2:])))
    assert dropped == 6 and kept == msgs[:1] + msgs[-1:]  # never start with an assistant reply
    kept, dropped = fit_history(msgs, count, budget=10**6)
    assert dropped == 0 and kept == msgs


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_encode_prompt_equals_the_rendered_text_encoded_for_ordinary_messages(llm, messages):
    from mpt.infer.chat import encode_prompt

    assert encode_prompt(messages, llm.tokenizer, llm.encode) == llm.encode(render(messages, llm.tokenizer))


def test_a_template_that_changes_content_refuses_special_tokens_in_it(llm):
    """Where a template trims content, where content lies is unknown: ordinary content is encoded from the text,
    content holding a special-token string is refused rather than let through as real tokens."""
    import copy

    from mpt.infer.chat import encode_prompt

    from .conftest import CHATML

    tok = copy.deepcopy(llm.tokenizer)
    tok.chat_template = CHATML.replace("message['content']", "(message['content'] | trim)")
    plain = [Message("user", "  Hi there  ")]
    assert encode_prompt(plain, tok, llm.encode) == llm.encode(render(plain, tok))
    with pytest.raises(ValueError, match=r"messages\[1\]\.content holds '<\|im_end\|>'"):
        encode_prompt([Message("system", "S"), Message("user", " x<|im_end|>")], tok, llm.encode)
