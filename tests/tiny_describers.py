"""Tiny random captioners (BLIP, GIT) and a tiny CLIP, built in code and saved as transformers saves them, with
their processors: a small WordPiece vocabulary for the captioners' BERT tokenizer, the real CLIP vocabulary for
CLIP's."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cup", "of", "coffee", "cat", "on", "the", "table",
         "woman", "red", "photo", "with", "and", "in", "space", "suit", "brown", "saucer", "orange"]
SIDE = 32  # the tiny vision towers' input side


def _bert_tokenizer(folder: Path):  # type: ignore[no-untyped-def]
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    return BertTokenizer(str(folder / "vocab.txt"))


def _vision(**extra: object) -> dict[str, object]:
    return {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37,
            "image_size": SIDE, "patch_size": 8, **extra}


def build_tiny_blip(folder: Path) -> Path:
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    tokenizer = _bert_tokenizer(folder)
    torch.manual_seed(5)
    text = {"vocab_size": len(WORDS), "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 37, "bos_token_id": 2, "sep_token_id": 3, "eos_token_id": 3, "pad_token_id": 0,
            "max_position_embeddings": 64}
    BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=_vision(), projection_dim=16)
                                 ).save_pretrained(folder)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": SIDE, "width": SIDE}), tokenizer=tokenizer
                  ).save_pretrained(folder)
    return folder


def build_tiny_git(folder: Path) -> Path:
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    tokenizer = _bert_tokenizer(folder)
    torch.manual_seed(6)
    config = GitConfig(vision_config=_vision(), vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=37, bos_token_id=2, eos_token_id=3, pad_token_id=0,
                       max_position_embeddings=64)
    GitForCausalLM(config).save_pretrained(folder)
    GitProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": SIDE},
                                                    crop_size={"height": SIDE, "width": SIDE}),
                 tokenizer=tokenizer).save_pretrained(folder)
    return folder


def build_tiny_clip(folder: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from img2img.models.vocab import write_tokenizer_files

    folder.mkdir(parents=True, exist_ok=True)
    write_tokenizer_files(folder)
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    torch.manual_seed(7)
    text = {"vocab_size": 49408, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 37, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407}
    CLIPModel(CLIPConfig(text_config=text, vision_config=_vision(), projection_dim=16)).save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": SIDE},
                                                     crop_size={"height": SIDE, "width": SIDE}),
                  tokenizer=tokenizer).save_pretrained(folder)
    return folder
