"""The student network: any input size, padded on the right and bottom and cropped back in place."""

import numpy as np
import pytest
import torch

from diffsketch.student.network import Student, StudentConfig


def _small_student(blocks: int = 1) -> Student:
    torch.manual_seed(0)
    return Student(StudentConfig(width=8, downsamples=2, blocks=blocks)).eval()


@pytest.mark.parametrize(
    ("h", "w", "mode", "blocks"),
    [
        (13, 10, "reflect", 1),  # pads 3 rows and 2 columns (multiple 4), each smaller than the side
        (9, 16, "reflect", 1),  # pads rows only
        # 2 rows need 2 more: too many to reflect, so the edge is repeated (no residual blocks: their
        # reflection padding cannot take the 1-pixel-high lowest resolution of a 4-pixel-high input)
        (2, 5, "edge", 0),
    ],
)
def test_padding_goes_right_and_bottom_and_the_crop_keeps_the_top_left(h, w, mode, blocks, one_thread):
    """A student's sketch of an odd-sized image equals its sketch of the same image padded by hand
    (numpy, on the right and bottom) up to a multiple of 4, cropped to the top-left h x w.

    Guards against padding the left/top, or cropping the wrong corner (a same-size but shifted sketch):
    the padded image needs no padding inside the student, so the oracle never uses its padding or crop."""
    student = _small_student(blocks)
    images = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(1))
    padded = np.pad(images.numpy(), [(0, 0), (0, 0), (0, -h % 4), (0, -w % 4)], mode=mode)
    assert padded.shape[-2] % 4 == 0 and padded.shape[-1] % 4 == 0 and padded.shape[-2:] != (h, w)
    with torch.no_grad():
        sketch = student(images)
        expected = student(torch.from_numpy(padded))[..., :h, :w]
    assert sketch.shape == (2, 1, h, w)
    torch.testing.assert_close(sketch, expected, rtol=0, atol=1e-6)


def test_multiple_sized_input_is_neither_padded_nor_cropped(one_thread):
    """An image whose sides are multiples of 2**downsamples goes through the network unchanged: the
    sketch is the sigmoid of the bare network on the image mapped to [-1, 1], pixel for pixel."""
    student = _small_student()
    images = torch.rand(1, 3, 12, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = torch.sigmoid(student.net(images * 2 - 1))
        sketch = student(images)
    assert expected.shape == (1, 1, 12, 8)
    torch.testing.assert_close(sketch, expected, rtol=0, atol=1e-6)
