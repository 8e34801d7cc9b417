"""Expected peak memory of SPM training and sampling per model family, from the real models' shapes.

    python benchmarks/memory_peak.py --out memory.json            # every family, on the meta device
    python benchmarks/memory_peak.py --check sd15 --check sdxl     # and measured on random weights

Sizes: each model part is built from the published config on PyTorch's meta device (no memory,
exact parameter counts). Activations: one training step's membrane-ON forward runs on the meta
device with `saved_tensors_hooks` counting the storage of every tensor the backward would keep (each
storage once; the weights' own storage, which a Linear's backward keeps a view of, never), with attention
counted as a fused GPU kernel keeps it (q, k, v, output and the log-sum-exp: PyTorch's
flash/memory-efficient SDPA, not the CPU math path's attention matrix). With gradient checkpointing,
each checkpointed unit (resnet, attention block, MMDiT block) keeps only its input, and the largest
unit's activations come back once during the backward.

peak(training) = denoiser weights + membrane (fp32 parameter, gradient, AdamW moments)
                 + saved activations of the ON pass (latents + anchors)
                 (text encoders and VAE offloaded after encoding, `train.offload_text_encoders`)
peak(sampling) = every part's weights + the units' inputs and the largest unit's working set (CFG: batch 2)

`--check NAME` also builds the model with random weights on this machine's CPU (in the model's
training dtype) and measures the process's peak resident memory over one training step at a small
resolution, against the same estimate at that resolution. Only where the machine holds it: SD 1.5 fp32, SDXL bf16.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

GiB = 2**30

SD15_UNET = {"cross_attention_dim": 768, "attention_head_dim": 8}  # the rest: diffusers' defaults (SD 1.x)
SDXL_UNET = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280), "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20), "cross_attention_dim": 2048, "use_linear_projection": True,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
SD3_TRANSFORMER = {  # SD3 medium
    "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 24, "attention_head_dim": 64,
    "num_attention_heads": 24, "joint_attention_dim": 4096, "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 192,
}
FLUX_TRANSFORMER = {  # FLUX.1 [dev]
    "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
    "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
          "projection_dim": 768, "vocab_size": 49408, "hidden_act": "quick_gelu"}
CLIP_G = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
          "projection_dim": 1280, "vocab_size": 49408, "hidden_act": "gelu"}
CLIP_H = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23, "num_attention_heads": 16,
          "projection_dim": 1024, "vocab_size": 49408, "hidden_act": "gelu"}
T5_XXL = {"d_model": 4096, "d_ff": 10240, "num_layers": 24, "num_heads": 64, "d_kv": 64, "vocab_size": 32128,
          "feed_forward_proj": "gated-gelu", "is_encoder_decoder": False}
VAE4 = {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "latent_channels": 4,
        "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4}
VAE16 = {**VAE4, "latent_channels": 16}

# classes whose forward diffusers runs under its gradient-checkpointing function
CHECKPOINT_UNITS = ("ResnetBlock2D", "Transformer2DModel", "JointTransformerBlock", "FluxTransformerBlock",
                    "FluxSingleTransformerBlock")
# where membranes go (what each family's membrane_targets selects; for the membrane's size only)
MEMBRANE_BLOCKS = ("Transformer2DModel", "JointTransformerBlock", "FluxTransformerBlock",
                   "FluxSingleTransformerBlock")


@dataclass
class Spec:
    name: str
    family: str
    resolution: int  # native
    dtype: torch.dtype  # the training dtype a user of this model picks
    denoiser: Callable[[], Any]
    text: list[Callable[[], Any]]
    vae: Callable[[], Any]
    inputs: Callable[[int, int, torch.dtype, str], tuple[tuple, dict]]  # (batch, res, dtype, device) -> args
    latent_factor: int = 8
    notes: list[str] = field(default_factory=list)


def _unet(config: dict[str, Any]):
    from diffusers import UNet2DConditionModel

    return lambda: UNet2DConditionModel(**config)


def _clip(config: dict[str, Any], projection: bool):
    def build():
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        cls = CLIPTextModelWithProjection if projection else CLIPTextModel
        return cls(CLIPTextConfig(**config))
    return build


def _t5():
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(**T5_XXL))


def _vae(config: dict[str, Any]):
    from diffusers import AutoencoderKL

    return lambda: AutoencoderKL(**config)


def _unet_inputs(cross: int, xl: bool):
    def make(batch: int, res: int, dtype: torch.dtype, device: str) -> tuple[tuple, dict]:
        x = torch.randn(batch, 4, res // 8, res // 8, dtype=dtype, device=device)
        t = torch.full((batch,), 500, device=device)
        kwargs: dict[str, Any] = {"encoder_hidden_states": torch.randn(batch, 77, cross, dtype=dtype, device=device)}
        if xl:
            kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, 1280, dtype=dtype, device=device),
                                           "time_ids": torch.randn(batch, 6, dtype=dtype, device=device)}
        return (x, t), kwargs
    return make


def _sd3_inputs(batch: int, res: int, dtype: torch.dtype, device: str) -> tuple[tuple, dict]:
    x = torch.randn(batch, 16, res // 8, res // 8, dtype=dtype, device=device)
    return (), {"hidden_states": x, "timestep": torch.full((batch,), 500.0, device=device),
                "encoder_hidden_states": torch.randn(batch, 77 + 256, 4096, dtype=dtype, device=device),
                "pooled_projections": torch.randn(batch, 2048, dtype=dtype, device=device)}


def _flux_inputs(batch: int, res: int, dtype: torch.dtype, device: str) -> tuple[tuple, dict]:
    tokens = (res // 16) ** 2  # latents packed 2x2
    return (), {"hidden_states": torch.randn(batch, tokens, 64, dtype=dtype, device=device),
                "timestep": torch.full((batch,), 0.5, device=device),
                "guidance": torch.full((batch,), 1.0, device=device),
                "encoder_hidden_states": torch.randn(batch, 512, 4096, dtype=dtype, device=device),
                "pooled_projections": torch.randn(batch, 768, dtype=dtype, device=device),
                "txt_ids": torch.zeros(512, 3, device=device), "img_ids": torch.zeros(tokens, 3, device=device)}


def _sd3():
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(**SD3_TRANSFORMER)


def _flux():
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(**FLUX_TRANSFORMER)


SPECS = {
    "sd15": Spec("SD 1.5", "sd1", 512, torch.float32, _unet(SD15_UNET), [_clip(CLIP_L, False)], _vae(VAE4),
                 _unet_inputs(768, False)),
    "sd21": Spec("SD 2.1 (768, v)", "sd1", 768, torch.float32,
                 _unet({"cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20),
                        "use_linear_projection": True}), [_clip(CLIP_H, False)], _vae(VAE4), _unet_inputs(1024, False)),
    "sdxl": Spec("SDXL 1.0", "sdxl", 1024, torch.bfloat16, _unet(SDXL_UNET),
                 [_clip(CLIP_L, False), _clip(CLIP_G, True)], _vae(VAE4), _unet_inputs(2048, True)),
    "sd3": Spec("SD3 medium", "sd3", 1024, torch.bfloat16, _sd3,
                [_clip(CLIP_L, True), _clip(CLIP_G, True), _t5], _vae(VAE16), _sd3_inputs),
    "flux": Spec("FLUX.1 dev", "flux", 1024, torch.bfloat16, _flux, [_clip(CLIP_L, False), _t5], _vae(VAE16),
                 _flux_inputs, latent_factor=16),
}


def _on_meta(build: Callable[[], Any]) -> Any:
    with torch.device("meta"):
        return build()


def param_bytes(module: Any, dtype: torch.dtype) -> int:
    return sum(p.numel() for p in module.parameters()) * torch.finfo(dtype).bits // 8


def membrane_params(denoiser: Any, rank: int = 1) -> int:
    total = 0
    for _, block in denoiser.named_modules():
        if type(block).__name__ in MEMBRANE_BLOCKS:
            for layer in block.modules():
                if isinstance(layer, torch.nn.Linear | torch.nn.Conv2d):
                    total += rank * (layer.weight[0].numel() + layer.weight.shape[0])
    return total


class _FusedAttention(torch.autograd.Function):
    """SDPA as a fused GPU kernel keeps it for the backward: q, k, v, the output and the log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, v):  # noqa: ANN001, ANN205
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205 - never run: counting only
        raise NotImplementedError


def _fused_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):  # noqa: ANN001, ANN202, ARG001
    return _FusedAttention.apply(query, key, value)


def saved_activations(spec: Spec, batch: int, res: int, dtype: torch.dtype, fused_attention: bool = True
                      ) -> dict[str, int]:
    """Bytes the backward keeps for one forward with a gradient (meta device), in all and with
    gradient checkpointing.

    Counted as memory is held: each storage once (two ops saving the same tensor, or views of it,
    keep one copy), and never the model's own weights (a Linear's backward saves `weight.t()`, a view
    of the parameter: 3.5 GiB of SDXL's bf16 weights, which an earlier version of this script counted
    as activations, with the duplicates: SDXL at 1024 px came to 44.3 GiB instead of 38.0)."""
    import torch.nn.functional as F

    denoiser = _on_meta(spec.denoiser).to(dtype)
    denoiser.requires_grad_(False)
    for _, block in denoiser.named_modules():  # a gradient flows through every membrane layer
        if type(block).__name__ in MEMBRANE_BLOCKS:
            for layer in block.modules():
                if isinstance(layer, torch.nn.Linear):
                    layer.weight.requires_grad_(True)
    weights = {p.untyped_storage()._cdata for p in denoiser.parameters()}
    sizes: dict[int, int] = {}  # storage -> bytes, every storage the backward keeps
    outside: set[int] = set()  # saved outside any checkpointed unit
    per_unit: dict[str, set[int]] = {}
    unit_inputs: set[int] = set()
    stack: list[str] = []

    def storage(t: torch.Tensor) -> int:
        key = t.untyped_storage()._cdata
        sizes.setdefault(key, t.untyped_storage().nbytes())
        return key

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage()._cdata in weights:
            return t  # weights are counted as weights
        key = storage(t)
        (per_unit.setdefault(stack[0], set()) if stack else outside).add(key)
        return t

    hooks = []
    for name, module in denoiser.named_modules():
        if type(module).__name__ in CHECKPOINT_UNITS:
            def pre(m, args, kwargs, name=name):  # noqa: ANN001, ANN202
                if not stack:
                    unit_inputs.update(storage(a) for a in (*args, *kwargs.values())
                                       if isinstance(a, torch.Tensor) and a.untyped_storage()._cdata not in weights)
                stack.append(name)

            hooks.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            hooks.append(module.register_forward_hook(lambda *_: stack.pop() and None))  # None: output kept
    args, kwargs = spec.inputs(batch, res, dtype, "meta")
    sdpa = F.scaled_dot_product_attention
    if fused_attention:
        F.scaled_dot_product_attention = _fused_sdpa
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            denoiser(*args, **kwargs)
    finally:
        F.scaled_dot_product_attention = sdpa
        for h in hooks:
            h.remove()

    def nbytes(keys: set[int]) -> int:
        return sum(sizes[k] for k in keys)

    saved = outside.union(*per_unit.values())
    kept = outside | unit_inputs  # with checkpointing: outside the units, and each unit's input
    largest = max((nbytes(keys - kept) for keys in per_unit.values()), default=0)  # recomputed, one at a time
    return {"saved": nbytes(saved), "saved_checkpointed": nbytes(kept) + largest}


def estimate(spec: Spec, batch: int, anchors: int, res: int, dtype: torch.dtype, fused_attention: bool = True
             ) -> dict[str, Any]:
    denoiser = _on_meta(spec.denoiser)
    text = [_on_meta(b) for b in spec.text]
    vae = _on_meta(spec.vae)
    weights = {"denoiser": param_bytes(denoiser, dtype), "text_encoders": sum(param_bytes(t, dtype) for t in text),
               "vae": param_bytes(vae, dtype)}
    params = {"denoiser": sum(p.numel() for p in denoiser.parameters()),
              "text_encoders": [sum(p.numel() for p in t.parameters()) for t in text],
              "vae": sum(p.numel() for p in vae.parameters()), "membrane_rank1": membrane_params(denoiser)}
    membrane = params["membrane_rank1"] * 4 * 4  # fp32 parameter, gradient, two AdamW moments
    act = saved_activations(spec, batch + anchors, res, dtype, fused_attention)
    # sampling keeps nothing for a backward: at any time the residual stream and skip connections (the
    # checkpointed units' inputs) and one unit's working set, for the CFG batch of 2
    sample_act = saved_activations(spec, 2, res, dtype, fused_attention)["saved_checkpointed"]
    train = weights["denoiser"] + membrane + act["saved"]
    train_ckpt = weights["denoiser"] + membrane + act["saved_checkpointed"]
    return {
        "model": spec.name, "family": spec.family, "resolution": res, "dtype": str(dtype).removeprefix("torch."),
        "batch": batch, "anchors": anchors, "parameters": params, "weights_bytes": weights,
        "membrane_bytes": membrane, "activation_bytes": act["saved"],
        "activation_bytes_checkpointed": act["saved_checkpointed"],
        # what spmctl/families/memory.py's PER_LATENT_PIXEL records: elements per sample and latent pixel
        # (1/8 of the image side for every family; FLUX packs 2x2 of them into a token)
        "per_latent_pixel": [round(act[k] / ((batch + anchors) * (res // 8) ** 2 * torch.finfo(dtype).bits // 8))
                             for k in ("saved", "saved_checkpointed")],
        "training_peak_gib": round(train / GiB, 2), "training_peak_checkpointed_gib": round(train_ckpt / GiB, 2),
        "training_peak_no_offload_gib": round((train + weights["text_encoders"] + weights["vae"]) / GiB, 2),
        "sampling_peak_gib": round((sum(weights.values()) + sample_act) / GiB, 2),
    }


def check(key: str, res: int, anchors: int) -> dict[str, Any]:
    """Random weights of the real shapes on the CPU: one training step's peak RSS against the estimate."""
    spec = SPECS[key]
    dtype = spec.dtype
    expected = estimate(spec, 1, anchors, res, dtype)  # PyTorch's CPU SDPA is a flash kernel too
    gc.collect()
    before = _max_rss()
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in its dtype: no fp32 copy on the way
    try:
        denoiser = spec.denoiser()
    finally:
        torch.set_default_dtype(default)
    denoiser.requires_grad_(False)
    from spmctl.membrane import MembraneNetwork
    from spmctl.membrane.network import find_targets

    net = MembraneNetwork(denoiser, targets=find_targets(denoiser, MEMBRANE_BLOCKS, (torch.nn.Linear,)))
    opt = torch.optim.AdamW(net.trainable_parameters(), lr=1e-4)
    args, kwargs = spec.inputs(1 + anchors, res, dtype, "cpu")
    start = time.perf_counter()
    built = _max_rss()
    out = denoiser(*args, **kwargs)
    out = out[0] if isinstance(out, tuple) else out.sample
    forward = _max_rss()  # the weights and what the forward keeps for the backward
    out.float().square().mean().backward()
    opt.step()
    seconds = time.perf_counter() - start
    peak = _max_rss()
    measured = peak - before
    predicted = expected["weights_bytes"]["denoiser"] + expected["membrane_bytes"] + expected["activation_bytes"]
    return {"model": spec.name, "resolution": res, "dtype": str(dtype).removeprefix("torch."), "anchors": anchors,
            "measured_peak_gib": round(measured / GiB, 2), "estimated_peak_gib": round(predicted / GiB, 2),
            "ratio": round(measured / predicted, 3), "step_seconds": round(seconds, 1),
            # where the peak comes from: building the model, the forward, then the backward's own share
            "measured_parts_gib": {"model": _gib(built - before), "forward": _gib(forward - built),
                                   "backward": _gib(peak - forward)},
            "estimated_parts_gib": {"model": _gib(expected["weights_bytes"]["denoiser"] + expected["membrane_bytes"]),
                                    "activations": _gib(expected["activation_bytes"])},
            "process_peak_rss_gib": _gib(peak),
            "note": "peak RSS growth of this process over building the model and one training step (CPU)"}


def _gib(n: int) -> float:
    return round(n / GiB, 2)


def _max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="*", default=list(SPECS), choices=list(SPECS))
    parser.add_argument("--anchors", type=int, default=4, help="prompt.sampling_batch_size (latent anchors)")
    parser.add_argument("--check", action="append", default=[], choices=list(SPECS),
                        help="also measure one step on random weights on this CPU")
    parser.add_argument("--check-resolution", type=int, default=256)
    parser.add_argument("--out", default=None, help="write the JSON here (else stdout)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = [estimate(SPECS[k], 1, args.anchors, SPECS[k].resolution, SPECS[k].dtype) for k in args.families]
    checks = [check(k, args.check_resolution, args.anchors) for k in args.check]
    result = {"estimates": rows, "checks": checks, "torch": torch.__version__}
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
