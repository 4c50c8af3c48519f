"""Multi-crop augmentation applied to a whole batch at once (``crops.backend: tensor``).

The draws are the per-image ones of the PIL path (multicrop.draw_views, from the generator seeded by
(seed, epoch, index)); only the pixel work differs: each op runs on every image of a view at once,
with the PIL op's arithmetic:

- crop + resize: PIL's antialiased bicubic (a = -0.5, support scaled by the reduction factor) as
  two resampling matrices per image, rows and columns (a flip reverses the column matrix);
- colour jitter: ImageEnhance's blends (brightness against black, contrast against the rounded mean
  grey level, saturation against the grey image) and a hue rotation in HSV, in each image's op order;
- grayscale: PIL's L = (299 R + 587 G + 114 B) / 1000;
- Gaussian blur: PIL's approximation, three passes of a box of fractional radius with edge
  replication (Gwosdek et al. 2011), as matrices;
- solarize: values >= 128/255 inverted.

Values are clamped to [0, 1] after each op as PIL's uint8 images are, but not rounded to 1/255.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

LUMA = (0.299, 0.587, 0.114)


def _cubic(t: Tensor) -> Tensor:
    """PIL's bicubic kernel (a = -0.5)."""
    a, t = -0.5, t.abs()
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = (((t - 5) * t + 8) * t - 4) * a
    return torch.where(t < 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def resize_matrix(start: Tensor, length: Tensor, size_in: int, size_out: int) -> Tensor:
    """(n, size_out, size_in): PIL's resampling of pixels [start, start + length) to size_out."""
    start, length = start.double()[:, None], length.double()[:, None]
    scale = length / size_out
    fscale = scale.clamp(min=1.0)
    support = 2.0 * fscale
    rel = (torch.arange(size_out, dtype=torch.float64) + 0.5)[None] * scale   # centres, crop coordinates
    lo = (rel - support + 0.5).trunc().clamp(min=0) + start
    hi = torch.minimum((rel + support + 0.5).trunc(), length) + start
    x = torch.arange(size_in, dtype=torch.float64)[None, None]
    w = _cubic((x + 0.5 - (rel + start)[..., None]) / fscale[..., None])
    w = w * ((x >= lo[..., None]) & (x < hi[..., None]))
    return (w / w.sum(-1, keepdim=True)).float()


_ROWS: dict[tuple[int, int, int, int], Tensor] = {}   # (start, length, size_in, size_out) -> (size_out, size_in)


def _resize_rows(keys: Sequence[tuple[int, int, int, int]]) -> list[Tensor]:
    """Cached resize_matrix rows; the missing ones computed in one call. A dataset of one image size
    has a few hundred distinct (start, length) pairs per view size."""
    missing = sorted({k for k in keys if k not in _ROWS})
    for size_in, size_out in sorted({(k[2], k[3]) for k in missing}):
        group = [k for k in missing if (k[2], k[3]) == (size_in, size_out)]
        mats = resize_matrix(torch.tensor([k[0] for k in group]), torch.tensor([k[1] for k in group]),
                             size_in, size_out)
        if len(_ROWS) + len(group) > 1 << 16:
            _ROWS.clear()
        _ROWS.update(zip(group, mats))
    return [_ROWS[k] for k in keys]


def crop_matrices(boxes: Sequence[tuple[int, int, int, int]], flips: Sequence[bool], h: int, w: int,
                  size: int) -> tuple[Tensor, Tensor]:
    """Row (n, size, h) and column (n, size, w) matrices of integer crop boxes (top, left, height,
    width); a flip reverses the column matrix's output order."""
    rows = torch.stack(_resize_rows([(t, ch, h, size) for t, _, ch, _ in boxes]))
    cols = torch.stack(_resize_rows([(left, cw, w, size) for _, left, _, cw in boxes]))
    return rows, torch.where(torch.tensor(flips, dtype=torch.bool)[:, None, None], cols.flip(1), cols)


def box_blur_matrix(radius: Tensor, size: int, passes: int = 3) -> Tensor:
    """(n, size, size): PIL's GaussianBlur(radius) along one axis (ImagingGaussianBlur)."""
    sigma2 = radius.double() ** 2 / passes
    big = torch.sqrt(12.0 * sigma2 + 1.0)
    ell = torch.floor((big - 1.0) / 2.0)
    frac = (2 * ell + 1) * (ell * (ell + 1) - 3 * sigma2) / (6 * (sigma2 - (ell + 1) ** 2))
    reach = int(ell.max().item()) + 1 if len(radius) else 1
    d = torch.arange(-reach, reach + 1, dtype=torch.float64)[None]
    w = torch.where(d.abs() <= ell[:, None], 1.0, torch.where(d.abs() == ell[:, None] + 1, frac[:, None], 0.0))
    w = w / (2 * (ell + frac) + 1)[:, None]
    i = torch.arange(size)[:, None]
    cols = (i + d.long()).clamp(0, size - 1)                                  # edge replication
    box = torch.zeros(len(radius), size, size, dtype=torch.float64)
    box.scatter_add_(2, cols.expand(len(radius), -1, -1), w[:, None, :].expand(-1, size, -1))
    out = box
    for _ in range(passes - 1):
        out = box @ out
    return out.float()


def gray(x: Tensor) -> Tensor:
    """(n, 1, H, W) luminance of (n, 3, H, W)."""
    return torch.matmul(x.new_tensor(LUMA)[None], x.flatten(2)).view(x.shape[0], 1, *x.shape[2:])


def shift_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue of (n, 3, H, W) RGB by ``shift`` (n,) turns in [-0.5, 0.5] (torchvision's
    adjust_hue: RGB -> HSV, H + shift mod 1, HSV -> RGB)."""
    maxc, arg = x.max(1)                            # the first maximal channel, as torchvision
    delta = maxc - x.amin(1)
    diffs = x[:, [1, 2, 0]] - x[:, [2, 0, 1]]       # g - b, b - r, r - g
    h6 = diffs.gather(1, arg[:, None]).squeeze(1) / delta.clamp(min=1e-12) + 2.0 * arg
    h6 = h6 + 6.0 * shift[:, None, None]            # hue in sixths of a turn, plus the shift
    h6 = h6 - 6.0 * torch.floor(h6 * (1 / 6))       # mod 6 (torch.remainder is 3x slower here)
    # HSV -> RGB: channel c = V - (V - min) clamp(min(k, 4 - k), 0, 1), k = (n_c + 6 H) mod 6, n = 5, 3, 1
    k = h6[:, None] + _HUE_OFFSETS
    k = torch.where(k >= 6.0, k - 6.0, k)
    return maxc[:, None] - delta[:, None] * torch.minimum(k, 4.0 - k).clamp_(0, 1)


_HUE_OFFSETS = torch.tensor([5.0, 3.0, 1.0])[None, :, None, None]


def color_jitter(x: Tensor, jitters: Sequence[tuple[tuple[int, float], ...]]) -> Tensor:
    """ColorJitter with each image's ops in its own order (multicrop.JITTER_OPS: brightness,
    contrast, saturation, hue), slot by slot. Brightness, contrast and saturation are ImageEnhance's
    blends lerp(D, x, f), D black, the rounded mean grey level or the grey image: one lerp per slot
    for every image (f = 1 where the slot holds another op); hue on the images that have it there."""
    slots = max((len(j) for j in jitters), default=0)
    table = [[j[i] if len(j) > i else (-1, 1.0) for i in range(slots)] for j in jitters]
    ops = torch.tensor([[op for op, _ in row] for row in table]).reshape(-1, slots)
    fs = torch.tensor([[f for _, f in row] for row in table]).reshape(-1, slots)
    blend_f = torch.where((ops >= 0) & (ops <= 2), fs, 1.0)[:, :, None, None, None]
    con, sat = (ops == 1).to(x.dtype)[:, :, None, None, None], (ops == 2).to(x.dtype)[:, :, None, None, None]
    hue_shift = torch.trunc(fs * 255) / 255   # torchvision on PIL shifts the uint8 hue by int(f * 255)
    for slot in range(slots):
        present = {row[slot][0] for row in table}
        if present & {0, 1, 2}:
            degenerate = x.new_zeros(1)
            if present & {1, 2}:
                g = gray(x)
                degenerate = con[:, slot] * (torch.round(g.mean((2, 3), keepdim=True) * 255) / 255) + sat[:, slot] * g
            x = torch.lerp(degenerate, x, blend_f[:, slot]).clamp_(0, 1)
        if 3 in present:
            hue = (ops[:, slot] == 3).nonzero().flatten()
            x[hue] = shift_hue(x[hue], hue_shift[hue, slot]).clamp_(0, 1)
    return x


def augment_view(images: Tensor, draws: Sequence, size: int, mean: Tensor, std: Tensor) -> Tensor:
    """Views of one size: (n, 3, H, W) uint8, or float in [0, 1], and n multicrop.ViewDraw ->
    (n, 3, size, size) normalised."""
    h, w = images.shape[-2:]
    rows, cols = crop_matrices([d.box for d in draws], [d.flip for d in draws], h, w, size)
    if images.dtype == torch.uint8:
        images, cols = images.float(), cols * (1 / 255)
    x = (images @ cols[:, None].transpose(-1, -2)).clamp_(0, 1)        # PIL: horizontal pass first,
    x = (rows[:, None] @ x).clamp_(0, 1)                                  # clipped, then vertical
    if any(d.jitter for d in draws):
        x = color_jitter(x, [d.jitter for d in draws])
    grey = [i for i, d in enumerate(draws) if d.gray]
    if grey:
        ix = torch.tensor(grey)
        x[ix] = gray(x[ix]).expand(-1, 3, -1, -1)
    blurred = [i for i, d in enumerate(draws) if d.blur is not None]
    if blurred:
        ix = torch.tensor(blurred)
        m = box_blur_matrix(torch.tensor([draws[i].blur for i in blurred]), size)[:, None]
        x[ix] = (m @ x[ix] @ m.transpose(-1, -2)).clamp_(0, 1)
    solarized = [i for i, d in enumerate(draws) if d.solarize]
    if solarized:
        ix = torch.tensor(solarized)
        xs = x[ix]
        x[ix] = torch.where(xs >= 128 / 255, 1 - xs, xs)
    return torch.addcmul((-mean / std)[None, :, None, None], x, (1 / std)[None, :, None, None])
