"""A small pre-norm Vision Transformer for low-resolution images."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sconce.models._layers import check_positive_int, check_shape_args

__all__ = ["EncoderBlock", "ViT", "vit"]


def _auto_patch_size(image_size: int) -> int:
    """Pick the smallest patch size dividing ``image_size`` with a grid of at most 8x8.

    Args:
        image_size: Height and width of the input images.

    Returns:
        The patch size (4 for 32x32 and 28x28 images).

    Raises:
        ValueError: If the only such patch is the whole image (a 1x1 grid)
            although the image is larger than 8 pixels.

    Example:
        >>> _auto_patch_size(32), _auto_patch_size(28), _auto_patch_size(224)
        (4, 4, 28)
    """
    patch = next(
        p
        for p in range(1, image_size + 1)
        if image_size % p == 0 and image_size <= 8 * p
    )
    if patch == image_size > 8:
        raise ValueError(
            f"cannot choose a patch size for image_size={image_size}: its only "
            "divisor giving at most an 8x8 grid is the whole image; pass "
            "patch_size= explicitly or resize the images (e.g. to a multiple of 4)"
        )
    return patch


class EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block.

    ``x = x + attn(norm1(x))`` then ``x = x + mlp(norm2(x))``, where ``attn``
    is ``nn.MultiheadAttention`` (batch first) and ``mlp`` is
    ``Linear -> GELU -> Linear``.

    Args:
        embed_dim: Token dimension.
        num_heads: Attention heads; must divide ``embed_dim``.
        mlp_ratio: Hidden MLP width as a multiple of ``embed_dim``.

    Example:
        >>> block = EncoderBlock(64, num_heads=4, mlp_ratio=2)
        >>> block(torch.randn(2, 65, 64)).shape
        torch.Size([2, 65, 64])
    """

    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(embed_dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, embed_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: Tokens of shape ``(batch, tokens, embed_dim)``.

        Returns:
            Tokens of the same shape.

        Example:
            >>> EncoderBlock(8, num_heads=2, mlp_ratio=2)(torch.randn(1, 5, 8)).shape
            torch.Size([1, 5, 8])
        """
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Vision Transformer classifying from a learnable class token.

    A ``Conv2d`` with ``kernel_size == stride == patch_size`` embeds
    non-overlapping patches; a class token is prepended, learnable position
    embeddings are added, ``depth`` :class:`EncoderBlock` s follow, and the
    final ``LayerNorm``-ed class token goes through a linear head.

    Args:
        num_classes: Number of output classes.
        in_channels: Number of input image channels.
        image_size: Height and width of the input images.
        patch_size: Patch size; must divide ``image_size``. Defaults to the
            smallest divisor giving at most an 8x8 patch grid (4 for 28 and 32).
        embed_dim: Token dimension.
        depth: Number of encoder blocks.
        num_heads: Attention heads; must divide ``embed_dim``.
        mlp_ratio: Hidden MLP width as a multiple of ``embed_dim``.

    Raises:
        ValueError: If ``patch_size`` does not divide ``image_size``,
            ``num_heads`` does not divide ``embed_dim``, or a size is not
            positive.

    Example:
        >>> model = ViT(in_channels=1, image_size=28)
        >>> model.patch_size, model(torch.randn(2, 1, 28, 28)).shape
        (4, torch.Size([2, 10]))
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        patch_size: int | None = None,
        embed_dim: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        check_shape_args(num_classes, in_channels, image_size)
        for name, value in (
            ("embed_dim", embed_dim),
            ("depth", depth),
            ("num_heads", num_heads),
        ):
            check_positive_int(name, value)
        if embed_dim % num_heads:
            raise ValueError(
                f"num_heads={num_heads} must divide embed_dim={embed_dim}; "
                "change one of them (e.g. embed_dim=64, num_heads=4)"
            )
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio!r}")
        if patch_size is None:
            patch_size = _auto_patch_size(image_size)
        check_positive_int("patch_size", patch_size)
        if image_size % patch_size:
            raise ValueError(
                f"patch_size={patch_size} does not divide image_size={image_size}; "
                "choose a patch_size that divides it or resize the images"
            )
        self.patch_size = patch_size
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(
            in_channels, embed_dim, patch_size, stride=patch_size
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.blocks = nn.Sequential(
            *(EncoderBlock(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch of images.

        Args:
            x: Images of shape ``(batch, in_channels, image_size, image_size)``.

        Returns:
            Logits of shape ``(batch, num_classes)``.

        Example:
            >>> ViT(depth=1)(torch.randn(1, 3, 32, 32)).shape
            torch.Size([1, 10])
        """
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat((cls, tokens), dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


def vit(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    **overrides: Any,
) -> ViT:
    """Build a small :class:`ViT` (64-dim tokens, 4 blocks, 4 heads).

    Args:
        num_classes: Number of output classes.
        in_channels: Number of input image channels.
        image_size: Height and width of the input images.
        **overrides: Further :class:`ViT` keyword arguments (``patch_size``,
            ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``).

    Returns:
        The model.

    Example:
        >>> model = vit(in_channels=1, image_size=28, depth=2)
        >>> model(torch.randn(1, 1, 28, 28)).shape
        torch.Size([1, 10])
    """
    return ViT(
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        **overrides,
    )
