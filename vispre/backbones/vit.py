"""timm ViT creation and the MaskedViT wrapper (encode only the kept tokens).

The wrapper keeps the timm ``VisionTransformer`` untouched in ``.vit`` so that its state dict is timm's own
(export needs no renaming) and growth operators can swap it for a grown copy.
"""

from __future__ import annotations

from typing import NamedTuple

import timm
import torch
from timm.models import checkpoint_seq
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from vispre.backbones.masking import TokenMask, gather_tokens, random_token_mask
from vispre.backbones.pos_embed import sincos_pos_embed_2d
from vispre.backbones.weights import init_from_file
from vispre.errors import VispreError


def create_vit(model_name: str = "vit_tiny_patch16_224", *, img_size: int | None = None,
               patch_size: int | None = None, in_chans: int | None = None, embed_dim: int | None = None,
               depth: int | None = None, num_heads: int | None = None, mlp_ratio: float | None = None,
               num_classes: int = 0, **timm_kwargs: object) -> VisionTransformer:
    """Create a timm VisionTransformer by name (headless by default), optionally overriding its sizes.

    Never downloads weights (``pretrained=False``); load weights with :func:`vispre.hub.load_backbone`.

    Args:
        model_name: any timm ViT name (``vit_base_patch16_224``, ...); its defaults are overridden by the
            explicit sizes that are not None.
        img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio: optional overrides.
        num_classes: classifier outputs; 0 (default) = no head, forward returns pooled features.
        **timm_kwargs: further VisionTransformer arguments (class_token, reg_tokens, global_pool,
            init_values, qkv_bias, drop_path_rate, ...).

    Returns:
        A VisionTransformer (with ``num_classes=0``: forward returns [B, D] pooled features).
    """
    sizes = dict(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                 depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio)
    kwargs = {k: v for k, v in {**sizes, **timm_kwargs}.items() if v is not None}
    if model_name not in timm.list_models("vit_*"):
        raise VispreError(f"unknown timm ViT name {model_name!r}; see timm.list_models('vit_*')")
    ps, im = kwargs.get("patch_size"), kwargs.get("img_size")
    if isinstance(ps, int) and isinstance(im, int) and im % ps:
        raise VispreError(f"img_size {im} is not divisible by patch_size {ps}")
    dim, heads = kwargs.get("embed_dim"), kwargs.get("num_heads")
    if isinstance(dim, int) and isinstance(heads, int) and dim % heads:
        raise VispreError(f"embed_dim {dim} is not divisible by num_heads {heads}")
    model = timm.create_model(model_name, pretrained=False, num_classes=num_classes, **kwargs)
    if not isinstance(model, VisionTransformer):
        raise VispreError(f"{model_name!r} is not a plain timm VisionTransformer ({type(model).__name__})")
    return model


class MaskedEncoding(NamedTuple):
    """Output of :meth:`MaskedViT.forward_masked`.

    Attributes:
        tokens: [B, P + L_keep, D] encoder output (after the final norm); P prefix tokens first.
        mask: TokenMask of the patch tokens (mask [B, L], 1 = masked).
    """

    tokens: Tensor
    mask: TokenMask


class MaskedViT(nn.Module):
    """A timm ViT that can encode only a random subset of its patch tokens (MAE encoder).

    Args:
        model_name: timm ViT name whose defaults the sizes below override.
        img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio: ViT sizes.
        class_token: prepend a cls token. reg_tokens: number of register tokens.
        global_pool: timm pooling for :meth:`forward` and the exported embedding ('token' = cls, 'avg' / 'max'
            / 'avgmax' = mean / per-channel max / their average over the patch tokens).
        fc_norm: timm's switch that moves the final norm after the pooling (None: timm's default, on for
            'avg' / 'max' / 'avgmax'). ``False`` keeps the norm on every token, so a run can change its pooling
            without changing the architecture its encoder trains (the MAE decoder reads normed tokens).
        init_values: LayerScale init (None = no LayerScale).
        qkv_bias: bias in the qkv projection. drop_path_rate: stochastic depth.
        sincos_pos_embed: replace the learned position embedding by the fixed, frozen 2-D sin-cos one
            (MAE recipe).
        init_from: warm start: a run folder, checkpoint, exported ``.safetensors`` or timm/MAE state dict whose
            backbone weights replace the fresh ones (read safely by
            :func:`vispre.backbones.weights.init_from_file`; the architecture must match, ``pos_embed`` is
            resampled for another image size; with sincos_pos_embed the loaded table stays frozen). Heads stay
            fresh.
    """

    def __init__(self, model_name: str = "vit_tiny_patch16_224", img_size: int = 224,
                 patch_size: int | None = None, in_chans: int = 3, embed_dim: int | None = None,
                 depth: int | None = None, num_heads: int | None = None, mlp_ratio: float | None = None,
                 class_token: bool = True, reg_tokens: int = 0, global_pool: str = "token",
                 fc_norm: bool | None = None, init_values: float | None = None, qkv_bias: bool = True,
                 drop_path_rate: float = 0.0, sincos_pos_embed: bool = True, init_from: str | None = None) -> None:
        super().__init__()
        self.vit = create_vit(model_name, img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                              embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                              class_token=class_token, reg_tokens=reg_tokens, global_pool=global_pool,
                              fc_norm=fc_norm, init_values=init_values, qkv_bias=qkv_bias,
                              drop_path_rate=drop_path_rate)
        if sincos_pos_embed:
            self._set_sincos_pos_embed()
        if init_from is not None:
            init_from_file(self.vit, init_from)

    def _set_sincos_pos_embed(self) -> None:
        pos = self.vit.pos_embed
        prefix = pos.shape[1] - self.num_patches
        table = sincos_pos_embed_2d(pos.shape[-1], self.grid_size, num_prefix_tokens=prefix)
        with torch.no_grad():
            pos.copy_(table.unsqueeze(0))
        pos.requires_grad_(False)

    @property
    def patch_size(self) -> int:
        return int(self.vit.patch_embed.patch_size[0])

    @property
    def grid_size(self) -> tuple[int, int]:
        gh, gw = self.vit.patch_embed.grid_size
        return int(gh), int(gw)

    @property
    def num_patches(self) -> int:
        return int(self.vit.patch_embed.num_patches)

    @property
    def in_chans(self) -> int:
        return int(self.vit.patch_embed.proj.in_channels)

    @property
    def embed_dim(self) -> int:
        return int(self.vit.embed_dim)

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.vit.num_prefix_tokens)

    def embed(self, images: Tensor) -> Tensor:
        """Patch-embed, add position embeddings, prepend prefix tokens: [B, C, H, W] -> [B, P + L, D]."""
        return embed_tokens(self.vit, images)

    def run_blocks(self, tokens: Tensor) -> Tensor:
        """norm_pre -> blocks -> norm: [B, N, D] -> [B, N, D]. Honours timm's
        ``vit.set_grad_checkpointing()`` (blocks recomputed in backward, as in timm's forward_features)."""
        x = self.vit.norm_pre(tokens)
        x = forward_blocks(self.vit.blocks, x, checkpointing=self.vit.grad_checkpointing)
        return self.vit.norm(x)

    def forward_masked(self, images: Tensor, mask_ratio: float, noise: Tensor | None = None) -> MaskedEncoding:
        """Encode a random subset of patches (prefix tokens always kept).

        Args:
            images: [B, C, H, W].
            mask_ratio: fraction of patch tokens removed, in (0, 1).
            noise: optional [B, L] masking noise (see random_token_mask).

        Returns:
            MaskedEncoding(tokens [B, P + L_keep, D], mask).
        """
        x = self.embed(images)
        prefix, patches = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens:]
        mask = random_token_mask(patches.shape[0], patches.shape[1], mask_ratio, noise=noise,
                                 device=images.device)
        x = torch.cat([prefix, gather_tokens(patches, mask.ids_keep)], dim=1)
        return MaskedEncoding(tokens=self.run_blocks(x), mask=mask)

    def forward_features(self, images: Tensor) -> Tensor:
        """All tokens after the final norm: [B, C, H, W] -> [B, P + L, D]."""
        return self.run_blocks(self.embed(images))

    def pool(self, tokens: Tensor) -> Tensor:
        """timm's pooling + fc_norm of full token sequences: [B, P + L, D] -> [B, D]."""
        return self.vit.forward_head(tokens, pre_logits=True)

    def forward(self, images: Tensor) -> Tensor:
        """Pooled features (timm's ``global_pool``): [B, C, H, W] -> [B, D]."""
        return self.pool(self.forward_features(images))


def embed_tokens(vit: VisionTransformer, images: Tensor) -> Tensor:
    """Patch embedding, prefix tokens and position embedding of a timm ViT, from its public attributes.

    The same arithmetic as timm's own forward_features (so outputs are bit-identical): prefix tokens
    (``cls_token``, then ``reg_token``) are concatenated in front of the patch tokens, and ``pos_embed`` is added
    after the concatenation, or, with ``no_embed_class``, to the patch tokens only before it; then
    ``pos_drop``. (timm's ``patch_drop`` is not applied: MaskedViT does its own masking.)

    Args:
        vit: timm VisionTransformer (fixed image size: ``dynamic_img_size`` is not supported).
        images: [B, C, H, W].

    Returns:
        [B, P + L, D] tokens, P = ``vit.num_prefix_tokens`` prefix tokens first.
    """
    x = vit.patch_embed(images)
    if x.ndim != 3:
        raise VispreError("MaskedViT needs a timm ViT with a fixed image size (dynamic_img_size=False)")
    prefix = [token.expand(x.shape[0], -1, -1) for token in (vit.cls_token, vit.reg_token) if token is not None]
    if vit.pos_embed is None:
        return torch.cat([*prefix, x], dim=1)
    if vit.no_embed_class:
        x = x + vit.pos_embed
        x = torch.cat([*prefix, x], dim=1) if prefix else x
    else:
        x = torch.cat([*prefix, x], dim=1) if prefix else x
        x = x + vit.pos_embed
    return vit.pos_drop(x)


def forward_blocks(blocks: nn.Sequential, x: Tensor, *, checkpointing: bool = False) -> Tensor:
    """Run transformer ``blocks`` in order; with ``checkpointing`` (and gradients enabled) through timm's
    :func:`timm.models.checkpoint_seq`, non-reentrant: each block's activations are recomputed in backward.

    Args:
        blocks: the blocks (timm ``vit.blocks``, an MAE decoder's blocks).
        x: [B, N, D] tokens.
        checkpointing: recompute activations in backward instead of storing them.

    Returns:
        [B, N, D].
    """
    if checkpointing and torch.is_grad_enabled():
        return checkpoint_seq(blocks, x, use_reentrant=False)
    return blocks(x)


def describe_vit(vit: VisionTransformer) -> dict[str, object]:
    """The timm ``create_model`` arguments that rebuild ``vit``'s architecture, read off the model itself.

    Works after growth too (nothing is cached). Passing the result as ``create_vit(**describe_vit(m))``
    gives a model with the same state-dict keys and shapes.

    Returns:
        dict with ``model_name`` and the size/feature arguments (JSON-serialisable).
    """
    block = vit.blocks[0]
    has_layer_scale = not isinstance(block.ls1, nn.Identity)
    return {
        "model_name": (getattr(vit, "pretrained_cfg", None) or {}).get("architecture", "vit_base_patch16_224"),
        "img_size": int(vit.patch_embed.img_size[0]),
        "patch_size": int(vit.patch_embed.patch_size[0]),
        "in_chans": int(vit.patch_embed.proj.in_channels),
        "embed_dim": int(vit.embed_dim),
        "depth": len(vit.blocks),
        "num_heads": int(block.attn.num_heads),
        "mlp_ratio": block.mlp.fc1.out_features / vit.embed_dim,
        "qkv_bias": block.attn.qkv.bias is not None,
        "qk_norm": not isinstance(block.attn.q_norm, nn.Identity),
        # Only the presence of LayerScale shapes the model; the value is a placeholder init.
        "init_values": 1e-5 if has_layer_scale else None,
        "class_token": vit.cls_token is not None,
        "reg_tokens": int(vit.num_reg_tokens),
        "no_embed_class": bool(vit.no_embed_class),
        "global_pool": str(vit.global_pool),
        "fc_norm": not isinstance(vit.fc_norm, nn.Identity),
    }
