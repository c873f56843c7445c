"""Random-weight Stable Diffusion inpainting pipelines, built and saved locally (no hub).

``tiny`` is a few MB and runs in seconds on a CPU: the tests use it to drive the real diffusers
code path offline. ``full`` has the architecture of stabilityai's SD2 inpainting model (UNet with
9 input channels, 4-level VAE, OpenCLIP-H text encoder): random weights do the same arithmetic as
the real ones, so it measures speed where the real weights cannot be downloaded.

    python -m deepfake.inpaint.random_pipeline OUT_DIR [--size tiny|full]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

SIZES = {
    "tiny": {
        "unet": {
            "block_out_channels": (32, 64),
            "layers_per_block": 1,
            "sample_size": 8,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "cross_attention_dim": 32,
            "attention_head_dim": (2, 4),
        },
        "vae": {
            "block_out_channels": (32, 64),
            "layers_per_block": 1,
            "down_block_types": ("DownEncoderBlock2D",) * 2,
            "up_block_types": ("UpDecoderBlock2D",) * 2,
            "sample_size": 64,
        },
        "text": {
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "projection_dim": 32,
        },
    },
    # The published SD2 inpainting configuration (64x64 latents at 512x512 pixels).
    "full": {
        "unet": {
            "block_out_channels": (320, 640, 1280, 1280),
            "layers_per_block": 2,
            "sample_size": 64,
            "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            "cross_attention_dim": 1024,
            "attention_head_dim": (5, 10, 20, 20),
        },
        "vae": {
            "block_out_channels": (128, 256, 512, 512),
            "layers_per_block": 2,
            "down_block_types": ("DownEncoderBlock2D",) * 4,
            "up_block_types": ("UpDecoderBlock2D",) * 4,
            "sample_size": 512,
        },
        "text": {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_attention_heads": 16,
            "num_hidden_layers": 23,
            "projection_dim": 512,
        },
    },
}


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes that byte-level BPE vocabularies use."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def write_tokenizer_files(folder: Path) -> None:
    """A byte-level CLIP vocabulary (every byte, alone and word-final) with no merges."""
    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({f"{s}</w>": len(symbols) + i for i, s in enumerate(symbols)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def build_random_pipeline(out_dir: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Build a random-weight inpainting pipeline of ``size`` and ``save_pretrained`` it."""
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionInpaintPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    spec = SIZES[size]
    out = Path(out_dir)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        in_channels=9, out_channels=4, use_linear_projection=True, **spec["unet"]
    )
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **spec["vae"])
    write_tokenizer_files(out / "_vocab")
    tokenizer = CLIPTokenizer.from_pretrained(str(out / "_vocab"), model_max_length=77)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=max(len(tokenizer), 1000) if size == "tiny" else 49408,
            max_position_embeddings=77,
            bos_token_id=len(tokenizer) - 2,
            eos_token_id=len(tokenizer) - 1,
            pad_token_id=len(tokenizer) - 1,
            hidden_act="gelu",
            **spec["text"],
        )
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        steps_offset=1,
    )
    pipe = StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    args = parser.parse_args()
    print(build_random_pipeline(args.out_dir, args.size))


if __name__ == "__main__":
    main()
