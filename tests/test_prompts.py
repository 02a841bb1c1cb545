"""A1111's prompt syntax: the parser on A1111's documented examples, chunks of 75 tokens, weights, BREAK, clip skip,
and the embeddings computed from the definition on the tiny models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from img2img import Engine, GenerationRequest, InvalidArgument
from img2img.engine.prompt_syntax import CHUNK_TOKENS, chunks, parse
from img2img.engine.text import NEAR_ZERO, encode_text

LONG = ", ".join(f"a small detail number {n} here" for n in range(28))  # 195 tokens: three chunks


def pieces(text: str) -> list[tuple[str, float]]:
    return [(piece.text, pytest.approx(piece.weight)) for piece in parse(text).pieces]


@pytest.mark.parametrize(("text", "expected"), [  # A1111's documented examples
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    (r"\(literal\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.573), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55), (", sun, ", 1.1),
      ("sky", 1.4641), (".", 1.1)]),
    ("((word))", [("word", 1.21)]),
    ("[word]", [("word", 1 / 1.1)]),
    ("a ) b", [("a ) b", 1.0)]),
    ("", [("", 1.0)]),
])
def test_the_parser_reads_a1111s_examples(text: str, expected: list) -> None:
    assert pieces(text) == expected


def test_break_and_warnings() -> None:
    parsed = parse("a cat BREAK (a dog")
    assert [(p.text, p.is_break) for p in parsed.pieces] == [("a cat", False), ("", True), ("a dog", False)]
    assert parsed.pieces[2].weight == pytest.approx(1.1)
    assert parsed.warnings == ("prompt has 1 unclosed '('; as in A1111 it weights the rest of the prompt",)
    assert parse("a BREAKING b").pieces == parse("a BREAKING b").pieces[:1]  # BREAK only as a word
    assert "unmatched ')'" in parse("a) b", "negative_prompt").warnings[0]


@pytest.mark.parametrize("text", ["(fox:5)", "(fox:-3.5)", "(fox:1.2.3)"])
def test_bad_weights_are_refused_in_one_line(text: str, photo: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"prompt should be (attention )?weights .* such as \(word:1.2\)"):
        GenerationRequest(source=photo, prompt=text).validated()


@pytest.fixture(scope="module")
def sd(tiny_sd: Path):  # type: ignore[no-untyped-def]
    return Engine(device="cpu", dtype="float32", backend="torch").load(str(tiny_sd)).pipeline


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl: Path):  # type: ignore[no-untyped-def]
    return Engine(device="cpu", dtype="float32", backend="torch").load(str(tiny_sdxl)).pipeline


def test_chunks_of_75_with_comma_backtrack_and_break(sd) -> None:
    tokenizer = sd.tokenizer
    long = chunks(tokenizer, parse(LONG))
    assert len(long) == 3 and all(len(chunk.ids) == 77 for chunk in long)
    assert [c.ids[0] for c in long] == [tokenizer.bos_token_id] * 3 and long[0].ids[-1] == tokenizer.eos_token_id
    comma = tokenizer.get_vocab()[",</w>"]
    assert long[0].ids[long[0].tokens] == comma and long[0].tokens < CHUNK_TOKENS  # cut after a comma
    everything = tokenizer(LONG, add_special_tokens=False)["input_ids"]
    assert [token for chunk in long for token in chunk.ids[1:1 + chunk.tokens]] == everything  # nothing dropped
    broken = chunks(tokenizer, parse("a cat BREAK a dog"))
    assert [c.tokens for c in broken] == [2, 2]
    # as A1111: a BREAK with nothing after it starts no chunk
    assert [len(chunks(tokenizer, parse(text))) for text in ("", "BREAK", "a BREAK", "a BREAK b")] == [1, 1, 1, 2]


def _plain(pipeline, prompt: str, negative: str = "", clip_skip: int = 1) -> torch.Tensor:
    """diffusers' own encoding (without clip skip on SD, which it cannot do with transformers 5)."""
    if clip_skip == 1 or hasattr(pipeline, "text_encoder_2"):
        skip = clip_skip - 1 or None
        if hasattr(pipeline, "text_encoder_2"):
            out = pipeline.encode_prompt(prompt, device=pipeline.unet.device, num_images_per_prompt=1,
                                         do_classifier_free_guidance=True, negative_prompt=negative or None,
                                         clip_skip=skip)
        else:
            out = pipeline.encode_prompt(prompt, pipeline.unet.device, 1, True, negative_prompt=negative or None)
        return torch.cat([out[1], out[0]])
    return encode_text(pipeline, prompt, negative, True, (48, 64), "plain", clip_skip).embeddings


def _a1111(pipeline, prompt: str, negative: str = "", clip_skip: int = 1):  # type: ignore[no-untyped-def]
    return encode_text(pipeline, prompt, negative, True, (48, 64), "a1111", clip_skip)


@pytest.mark.parametrize("clip_skip", [1, 2])
def test_an_unweighted_short_prompt_equals_diffusers_byte_for_byte(sd, sdxl, clip_skip: int) -> None:
    for pipeline in (sd, sdxl):
        for negative in ("", "blurry, low quality"):
            ours = _a1111(pipeline, "a red fox in the snow", negative, clip_skip).embeddings
            theirs = _plain(pipeline, "a red fox in the snow", negative, clip_skip)
            rows = 1 if clip_skip > 1 and pipeline is sdxl else 0  # diffusers' SDXL negative ignores clip_skip
            assert torch.equal(ours[rows:], theirs[rows:])
    # Clip skip 2 by its definition (diffusers' own SD path cannot skip layers with transformers 5): the
    # penultimate layer through the final norm.
    ids = sd.tokenizer("a red fox", padding="max_length", max_length=77, return_tensors="pt").input_ids
    hidden = sd.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
    assert torch.equal(encode_text(sd, "a red fox", "", False, (48, 64), "a1111", 2).embeddings,
                       sd.text_encoder.final_layer_norm(hidden))
    # SDXL's diffusers path skips from its penultimate layer: its clip_skip=1 is A1111's 2.
    reference = sdxl.encode_prompt("a red fox", device=sdxl.unet.device, do_classifier_free_guidance=False,
                                   clip_skip=1)[0]
    assert torch.equal(encode_text(sdxl, "a red fox", "", False, (48, 64), "a1111", 2).embeddings, reference)


def _by_definition(pipeline, text: str) -> torch.Tensor:
    """The expected embeddings: each chunk encoded alone, times its weights, scaled back to its mean."""
    out = []
    for chunk in chunks(pipeline.tokenizer, parse(text)):
        hidden = pipeline.text_encoder(torch.tensor([chunk.ids]))[0].float()
        weights = torch.tensor(chunk.weights).reshape(1, -1, 1)
        weighted = hidden * weights
        if weighted.mean().abs() >= NEAR_ZERO * hidden.abs().mean():
            weighted = weighted * hidden.mean() / weighted.mean()
        out.append(weighted)
    return torch.cat(out, dim=1)


def test_weights_and_long_prompts_follow_the_definition(sd) -> None:
    for text in ("a (red:1.5) fox, [snow]", LONG, f"(sharp:1.3), {LONG} BREAK ((glow))"):
        positive = _a1111(sd, text).embeddings[1:]
        assert torch.allclose(positive, _by_definition(sd, text), atol=1e-6), text
    weighted = _a1111(sd, "a (red:1.5) fox").embeddings[1]
    plain = _a1111(sd, "a red fox").embeddings[1]
    assert not torch.equal(weighted, plain)
    assert torch.equal(_a1111(sd, "a (red:1) fox").embeddings, _a1111(sd, "a red fox").embeddings)


def test_the_shorter_prompt_is_padded_with_empty_chunks(sd) -> None:
    both = _a1111(sd, LONG, "blurry").embeddings
    assert both.shape[1] == 3 * 77
    empty = _a1111(sd, "", "").embeddings[0]
    assert torch.equal(both[0, 77:154], empty[:77]) and torch.equal(both[0, 154:], empty[:77])
    assert torch.equal(both[0, :77], _a1111(sd, "x", "blurry").embeddings[0])


def test_sdxl_uses_both_encoders_and_the_first_chunks_pool(sdxl) -> None:
    long = _a1111(sdxl, LONG, "")
    short = _a1111(sdxl, LONG.split(",")[0], "")
    width = sdxl.text_encoder.config.hidden_size + sdxl.text_encoder_2.config.hidden_size
    assert long.embeddings.shape == (2, 3 * 77, width)
    assert not long.embeddings[0].any()  # SDXL's zeros for an empty negative prompt, at every chunk
    first_ids = chunks(sdxl.tokenizer_2, parse(LONG))[0].ids
    first_ids = first_ids[:first_ids.index(sdxl.tokenizer_2.eos_token_id, 1) + 1]
    padded = first_ids + [sdxl.tokenizer_2.pad_token_id] * (77 - len(first_ids))
    pooled = sdxl.text_encoder_2(torch.tensor([padded]), output_hidden_states=True)[0]
    assert torch.allclose(long.added["text_embeds"][1], pooled[0], atol=1e-6)
    assert short.embeddings.shape[1] == 77


@pytest.mark.slow  # 18 s; CI runs it with -m slow
def test_a_long_weighted_prompt_runs_and_is_recorded(tiny_sd: Path, photo: Path) -> None:
    request = GenerationRequest(source=photo, prompt=f"(masterpiece:1.2), {LONG}", negative_prompt="[blurry",
                                model=str(tiny_sd), steps=4, seed=2, clip_skip=2)
    torch_result = Engine(device="cpu", dtype="float32", backend="torch").generate(request)
    record = torch_result.record
    assert (record.prompt_syntax, record.clip_skip) == ("a1111", 2)
    assert "Clip skip: 2" in record.to_parameters_text()
    assert any("negative_prompt has 1 unclosed '['" in note for note in torch_result.notes)
    plain = Engine(device="cpu", dtype="float32", backend="torch").generate(
        GenerationRequest(**{**request.__dict__, "prompt_syntax": "plain"}))
    assert plain.images[0].tobytes() != torch_result.images[0].tobytes()
    pytest.importorskip("openvino")
    fast = Engine(device="cpu", dtype="float32", backend="openvino").generate(request)  # 231 tokens a row
    assert not any("OpenVINO could not" in note for note in fast.notes), fast.notes
    gap = np.abs(np.asarray(fast.images[0], float) - np.asarray(torch_result.images[0], float)).max()
    assert gap <= 2, gap


def test_prompt_check_shows_chunks_weights_and_what_plain_drops() -> None:
    import json

    from test_cli import assert_one_line_error, img2img

    shown = img2img("prompt-check", f"(masterpiece:1.2), {LONG} BREAK ((glow", "--json")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert len(report["chunks"]) == 4 and report["dropped"] == ""
    assert report["chunks"][0]["runs"][0] == {"weight": 1.2, "text": "masterpiece"}
    assert report["chunks"][-1]["runs"][-1] == {"weight": 1.21, "text": "glow"}
    assert report["warnings"] == ["prompt has 2 unclosed '('; as in A1111 it weights the rest of the prompt"]
    plain = json.loads(img2img("prompt-check", LONG, "--prompt-syntax", "plain", "--json").stdout)
    assert len(plain["chunks"]) == 1 and plain["dropped"].startswith("0 here , a small detail number 1 1 here")
    assert_one_line_error(img2img("prompt-check", "a (big fox:9) dog"),
                          "PROMPT should be attention weights in [-3, 3]", "'(big fox:9)'")
