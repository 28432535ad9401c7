"""The Hugging Face reference (generators/hf.py): plain greedy whatever the model's generation_config says, and
safe to call from several threads on one model (it never touches the model)."""

from __future__ import annotations

import copy
import threading

import torch

from correctness.scenarios import MAX_NEW_TOKENS, case, contract_model
from generators import generate


def test_threads_leave_the_models_generation_config_alone() -> None:
    """Four threads on one model: every output is naive's, and model.generation_config is the same object with
    the same settings after (swapping it for the call left it replaced for good, eos and bos gone)."""
    model = copy.deepcopy(contract_model("cpu"))
    ids, eos, pad = case("one_row", model)
    expected = generate("naive", model, ids, MAX_NEW_TOKENS, eos_token_id=eos, pad_token_id=pad)
    config, settings = model.generation_config, model.generation_config.to_dict()
    start, outputs, errors = threading.Barrier(4), [], []

    def worker() -> None:
        try:
            start.wait()
            for _ in range(3):
                outputs.append(generate("hf_generate", model, ids, MAX_NEW_TOKENS, eos_token_id=eos, pad_token_id=pad))
        except Exception as e:  # noqa: BLE001 (re-raised below, in the test's thread)
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert model.generation_config is config and model.generation_config.to_dict() == settings
    assert len(outputs) == 12 and all(torch.equal(out, expected) for out in outputs)


def test_the_models_own_generation_settings_do_not_apply() -> None:
    """A repetition penalty, a minimum length and an EOS in model.generation_config would change greedy tokens:
    the reference ignores them all (eos_token_id=None never stops early) and leaves them in place."""
    model = copy.deepcopy(contract_model("cpu"))
    ids = case("no_eos", model).input_ids
    expected = generate("naive", model, ids, MAX_NEW_TOKENS)
    model.generation_config.repetition_penalty = 5.0
    model.generation_config.min_new_tokens = 2
    model.generation_config.eos_token_id = int(expected[0, -MAX_NEW_TOKENS + 1])
    settings = model.generation_config.to_dict()
    assert torch.equal(generate("hf_generate", model, ids, MAX_NEW_TOKENS), expected)
    assert model.generation_config.to_dict() == settings
