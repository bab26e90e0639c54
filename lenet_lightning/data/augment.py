"""Light training-time augmentation applied to whole batches of image tensors, on whatever device they live on.

torchvision's ``RandomCrop``/``RandomHorizontalFlip`` draw one choice per call, so a whole batch would share
one shift; here every image gets its own shift (and flip) from a single gather, without a per-image loop.
"""

import torch
import torch.nn.functional as F
from torch import Tensor


def shift_and_flip(images: Tensor, max_shift: int = 0, hflip: bool = False) -> Tensor:
    """Shift each N x C x H x W image by up to ``max_shift`` pixels each way (zero fill) and mirror about half.

    The same as a random ``max_shift``-padded crop per image. With ``max_shift=0`` and ``hflip=False`` the
    batch is returned as it is and no random numbers are drawn.
    """
    if max_shift == 0 and not hflip:
        return images
    n, channels, height, width = images.shape
    device = images.device
    padded = F.pad(images, (max_shift,) * 4)
    padded_width = width + 2 * max_shift
    # Index arithmetic in int32 (several times faster on CPU than int64), widened once for the gather.
    rows = torch.arange(height, device=device, dtype=torch.int32)[:, None]
    cols = torch.arange(width, device=device, dtype=torch.int32)
    grid = (rows * padded_width + cols).flatten()  # flat positions of the unshifted crop in the padded image
    top = torch.randint(0, 2 * max_shift + 1, (n, 1), device=device, dtype=torch.int32)
    left = torch.randint(0, 2 * max_shift + 1, (n, 1), device=device, dtype=torch.int32)
    index = top * padded_width + left + grid
    if hflip:
        # Mirroring moves column j to width - 1 - j: add that distance for the images drawn to flip.
        to_mirror = (width - 1 - 2 * cols).expand(height, width).flatten()
        flips = torch.randint(0, 2, (n, 1), device=device, dtype=torch.int32)
        index = index + flips * to_mirror
    index = index.long().view(n, 1, height * width).expand(-1, channels, -1)
    return padded.flatten(2).gather(2, index).view_as(images)
