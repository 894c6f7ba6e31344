"""Write diffusers SD 1.x modules back into the original LDM (CompVis) single-file key layout.

Real SD 1.x ``.safetensors`` / ``.ckpt`` checkpoints hold one flat state dict with the UNet under
``model.diffusion_model.`` (``input_blocks`` / ``middle_block`` / ``output_blocks``), the VAE under
``first_stage_model.`` (``encoder.down.N`` / ``decoder.up.N``, the decoder numbered from the lowest
resolution, with 1x1-conv attention weights) and the CLIP text model under
``cond_stage_model.transformer.text_model.``. ``to_ldm_state_dict`` produces that layout from
diffusers modules, so that the tests can exercise ``from_single_file`` (and its converters in
``diffusers.loaders.single_file_utils``) offline on the tiny model. Block counts come from the modules
themselves, so it works for any SD 1.x-shaped UNet / VAE, the full-size one included.
"""

from __future__ import annotations

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

# diffusers ResnetBlock2D parameter names -> LDM ResBlock names (UNet).
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
# VAE ResnetBlock: same names as diffusers except the shortcut.
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
# VAE mid-block attention: diffusers Attention -> LDM AttnBlock.
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename_head(rest: str, names: dict[str, str]) -> str:
    """Rename the module part of ``rest`` (``<module>.<weight|bias>``) through ``names``."""
    module, _, leaf = rest.rpartition(".")
    return f"{names.get(module, module)}.{leaf}"


def _unet_prefixes(unet) -> list[tuple[str, str, dict[str, str] | None]]:
    """(diffusers prefix, LDM prefix, rename table for what follows) for every UNet submodule."""
    table: list[tuple[str, str, dict[str, str] | None]] = [
        ("conv_in", "input_blocks.0.0", None),
        ("time_embedding.linear_1", "time_embed.0", None),
        ("time_embedding.linear_2", "time_embed.2", None),
        ("conv_norm_out", "out.0", None),
        ("conv_out", "out.2", None),
    ]

    # input_blocks: 0 is conv_in; then per level one entry per resnet (+ its transformer at .1), and one
    # entry for the downsampler (``.0.op``) on every level that has one.
    index = 1
    for b, block in enumerate(unet.down_blocks):
        attentions = getattr(block, "attentions", None)
        for j in range(len(block.resnets)):
            table.append((f"down_blocks.{b}.resnets.{j}", f"input_blocks.{index}.0", _UNET_RESNET))
            if attentions is not None:
                table.append((f"down_blocks.{b}.attentions.{j}", f"input_blocks.{index}.1", None))
            index += 1
        if block.downsamplers is not None:
            table.append((f"down_blocks.{b}.downsamplers.0.conv", f"input_blocks.{index}.0.op", None))
            index += 1

    # middle_block: resnet, transformer, resnet.
    mid = unet.mid_block
    table.append(("mid_block.resnets.0", "middle_block.0", _UNET_RESNET))
    for k in range(len(mid.attentions)):
        table.append((f"mid_block.attentions.{k}", f"middle_block.{2 * k + 1}", None))
        table.append((f"mid_block.resnets.{k + 1}", f"middle_block.{2 * k + 2}", _UNET_RESNET))

    # output_blocks: one entry per resnet (+ transformer at .1); the level's upsampler sits in its last
    # entry, after the transformer if there is one (``.2.conv``), else right after the resnet (``.1.conv``).
    index = 0
    for b, block in enumerate(unet.up_blocks):
        attentions = getattr(block, "attentions", None)
        count = len(block.resnets)
        for j in range(count):
            table.append((f"up_blocks.{b}.resnets.{j}", f"output_blocks.{index}.0", _UNET_RESNET))
            slot = 1
            if attentions is not None:
                table.append((f"up_blocks.{b}.attentions.{j}", f"output_blocks.{index}.1", None))
                slot = 2
            if j == count - 1 and block.upsamplers is not None:
                table.append((f"up_blocks.{b}.upsamplers.0.conv", f"output_blocks.{index}.{slot}.conv", None))
            index += 1
    return table


def _vae_prefixes(vae) -> list[tuple[str, str, dict[str, str] | None]]:
    table: list[tuple[str, str, dict[str, str] | None]] = [
        ("quant_conv", "quant_conv", None),
        ("post_quant_conv", "post_quant_conv", None),
    ]
    for part in ("encoder", "decoder"):
        coder = getattr(vae, part)
        table += [
            (f"{part}.conv_in", f"{part}.conv_in", None),
            (f"{part}.conv_norm_out", f"{part}.norm_out", None),
            (f"{part}.conv_out", f"{part}.conv_out", None),
        ]
        for k in range(len(coder.mid_block.resnets)):
            table.append((f"{part}.mid_block.resnets.{k}", f"{part}.mid.block_{k + 1}", _VAE_RESNET))
        for k in range(len(coder.mid_block.attentions)):
            table.append((f"{part}.mid_block.attentions.{k}", f"{part}.mid.attn_{k + 1}", _VAE_ATTENTION))

    for i, block in enumerate(vae.encoder.down_blocks):
        for j in range(len(block.resnets)):
            table.append((f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", _VAE_RESNET))
        if block.downsamplers is not None:
            table.append((f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv", None))

    # LDM numbers the decoder levels from the lowest resolution up, diffusers in execution order.
    levels = len(vae.decoder.up_blocks)
    for i, block in enumerate(vae.decoder.up_blocks):
        level = levels - 1 - i
        for j in range(len(block.resnets)):
            table.append((f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{level}.block.{j}", _VAE_RESNET))
        if block.upsamplers is not None:
            table.append((f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{level}.upsample.conv", None))
    return table


def _convert(state: dict[str, torch.Tensor], table, prefix: str, what: str) -> dict[str, torch.Tensor]:
    # Longest prefix first so that e.g. ``conv_out`` never shadows a longer name starting the same way.
    ordered = sorted(table, key=lambda row: len(row[0]), reverse=True)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        for src, dst, names in ordered:
            if key.startswith(src + "."):
                rest = key[len(src) + 1 :]
                out[prefix + dst + "." + (_rename_head(rest, names) if names else rest)] = tensor
                break
        else:
            raise KeyError(f"{what} parameter {key!r} has no LDM counterpart in this mapping")
    return out


def to_ldm_state_dict(unet, vae, text_encoder) -> dict[str, torch.Tensor]:
    """One flat LDM-layout state dict (detached copies) for an SD 1.x UNet, VAE and CLIP text encoder."""
    out = _convert(unet.state_dict(), _unet_prefixes(unet), UNET_PREFIX, "UNet")

    vae_sd = _convert(vae.state_dict(), _vae_prefixes(vae), VAE_PREFIX, "VAE")
    for key, tensor in vae_sd.items():
        # LDM's VAE attention uses 1x1 convolutions for q / k / v / proj_out: (C, C) -> (C, C, 1, 1).
        if ".mid.attn_" in key and key.endswith(".weight") and tensor.ndim == 2:
            vae_sd[key] = tensor[:, :, None, None]
    out.update(vae_sd)

    # transformers >= 5 flattened CLIPTextModel (no ``text_model.`` level); SD checkpoints keep it. They also
    # carry the ``position_ids`` buffer, which recent transformers no longer puts in the state dict.
    clip_sd = text_encoder.state_dict()
    for key, buffer in text_encoder.named_buffers():
        if key.endswith("position_ids") and key not in clip_sd:
            clip_sd[key] = buffer
    for key, tensor in clip_sd.items():
        out[CLIP_PREFIX + (key if key.startswith("text_model.") else "text_model." + key)] = tensor

    return {key: tensor.detach().clone().contiguous() for key, tensor in out.items()}
