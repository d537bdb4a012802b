# torch's bf16 weight gradient of a 3x3, stride-2, padding-1 convolution on the CPU (oneDNN), against float32's on
# the same tensors: 50 calls each, counted wrong where its relative error (Frobenius norm) is above 0.05 or NaN
# (bf16's own rounding: ~0.003). A ResNet with the ImageNet stem at data.image_size <= 16 has such a convolution
# over a 1x1 map (layer4's first block): byol.build.checked_precision trains it in float32.
# Run: python bf16_conv_1x1.py > bf16_conv_1x1.txt
import torch

CASES = [(1, 1, torch.channels_last), (1, 1, torch.contiguous_format), (4, 1, torch.channels_last),  # (height,
         (1, 4, torch.channels_last), (2, 2, torch.channels_last), (3, 3, torch.channels_last)]  # width, layout)

print(f"torch {torch.__version__}")
for threads in (1, 2):
    torch.set_num_threads(threads)
    for height, width, layout in CASES:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(8, 64, height, width, generator=g)
        grad_out = torch.randn(8, 64, (height + 1) // 2, (width + 1) // 2, generator=g)
        weight = torch.randn(64, 64, 3, 3, generator=g)

        def grad_w(dtype):
            args = [t.to(dtype).to(memory_format=layout) for t in (grad_out, x, weight)]
            return torch.ops.aten.convolution_backward(*args, None, [2, 2], [1, 1], [1, 1], False, [0, 0], 1,
                                                       [False, True, False])[1].float()

        exact = grad_w(torch.float32)
        errors = [((grad_w(torch.bfloat16) - exact).norm() / exact.norm()).item() for _ in range(50)]
        wrong = sum(not e <= 0.05 for e in errors)
        print(f"{threads} thread(s), input {height}x{width}, {str(layout).split('.')[-1]}: {wrong} of 50 wrong, "
              f"{sum(e != e for e in errors)} NaN; largest other error {max(e for e in errors if e == e):.3g}")
