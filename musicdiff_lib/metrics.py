"""Spectrogram similarity: SSIM (Wang et al. 2004), MSE and PSNR, batched in torch.

Chapter: ``10_evaluation``. Every function takes two batches of images of the
same shape, ``(B, C, H, W)``, ``(B, H, W)`` or ``(H, W)``, and returns one
number per item, shape ``(B,)`` (a 0-d tensor for a single ``(H, W)`` image).
"""
from __future__ import annotations

import torch


def _as_bchw(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    single = a.ndim == 2
    if a.ndim == 2:
        a, b = a[None, None], b[None, None]
    elif a.ndim == 3:
        a, b = a[:, None], b[:, None]
    elif a.ndim != 4:
        raise ValueError(f"expected (H, W), (B, H, W) or (B, C, H, W), got {tuple(a.shape)}")
    dtype = torch.promote_types(a.dtype, torch.float32) if a.is_floating_point() else torch.float32
    return a.to(dtype), b.to(dtype), single


def gaussian_window(sigma: float = 1.5, truncate: float = 3.5, dtype=torch.float64) -> torch.Tensor:
    """The 1-D Gaussian that ``scipy.ndimage.gaussian_filter`` uses: radius ``int(truncate·σ + 0.5)``."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=dtype)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _blur(x: torch.Tensor, taps: list[float]) -> torch.Tensor:
    """Separable 'valid' Gaussian blur of ``(N, H, W)``: no padding, so no border guesswork.

    Written as weighted sums of shifted slices rather than ``conv2d``: a
    single-channel convolution is poorly vectorised on CPUs, and the in-place
    adds stay in cache when the caller works on a few images at a time.
    """
    k = len(taps)
    height, width = x.shape[-2] - k + 1, x.shape[-1] - k + 1
    rows = x[..., 0:height, :] * taps[0]
    for i in range(1, k):
        rows.add_(x[..., i:i + height, :], alpha=taps[i])
    out = rows[..., 0:width] * taps[0]
    for i in range(1, k):
        out.add_(rows[..., i:i + width], alpha=taps[i])
    return out


def _ssim_chunk(x: torch.Tensor, y: torch.Tensor, taps: list[float], c1: float, c2: float) -> torch.Tensor:
    """Mean SSIM of ``(N, H, W)`` pairs → ``(N,)``."""
    stats = _blur(torch.stack([x, y, x * x, y * y, x * y]).flatten(0, 1), taps)
    mu_x, mu_y, xx, yy, xy = stats.reshape(5, x.shape[0], -1).unbind(0)
    mu_xy, mu_xx, mu_yy = mu_x * mu_y, mu_x * mu_x, mu_y * mu_y
    ssim_map = ((2 * mu_xy + c1) * (2 * (xy - mu_xy) + c2)) / ((mu_xx + mu_yy + c1) * (xx - mu_xx + yy - mu_yy + c2))
    return ssim_map.mean(dim=1)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03, chunk: int | None = None) -> torch.Tensor:
    """Mean structural similarity per item, Gaussian-weighted (σ = 1.5, 11 taps).

    SSIM(x, y) = (2μxμy + C1)(2σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)),
    C1 = (k1·L)², C2 = (k2·L)², L = ``data_range``; local statistics come from
    the Gaussian window and the map is averaged over the pixels whose window
    lies inside the image, matching ``skimage.metrics.structural_similarity``
    with ``gaussian_weights=True, use_sample_covariance=False``. Channels are
    averaged. ``chunk`` images are processed at a time (default: 4 on the
    CPU, where it keeps the work in cache; everything at once elsewhere).
    """
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    x, y, single = _as_bchw(a, b)
    taps = gaussian_window(sigma).tolist()
    if min(x.shape[-2:]) < len(taps):
        raise ValueError(f"images of {tuple(x.shape[-2:])} are smaller than the {len(taps)}-pixel SSIM window")
    batch, channels = x.shape[:2]
    x, y = x.flatten(0, 1), y.flatten(0, 1)
    if chunk is None:
        chunk = 4 if x.device.type == "cpu" else len(x)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    per_image = torch.cat([_ssim_chunk(x[i:i + chunk], y[i:i + chunk], taps, c1, c2)
                           for i in range(0, len(x), chunk)])
    result = per_image.reshape(batch, channels).mean(dim=1)
    return result[0] if single else result


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error per item."""
    x, y, single = _as_bchw(a, b)
    result = (x - y).pow(2).flatten(1).mean(dim=1)
    return result[0] if single else result


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per item: ``10·log10(L² / MSE)`` (inf for identical items)."""
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    return 10.0 * torch.log10(data_range**2 / mse(a, b))
