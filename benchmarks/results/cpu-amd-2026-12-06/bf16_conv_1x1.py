# torch's bf16 weight gradient of a 3x3, stride-2, padding-1 convolution on a 1x1 map, on the CPU (oneDNN):
# 100 calls on the same tensors. Where it is computed right, every call gives the same gradient, finite.
# A ResNet with the ImageNet stem at data.image_size <= 16 has such a convolution (layer4's first block);
# README.md, "2-core CPU with bf16 arithmetic". Run: python bf16_conv_1x1.py > bf16_conv_1x1.txt
import torch

torch.manual_seed(0)
print(f"torch {torch.__version__}")
CASES = [(1, torch.channels_last, torch.bfloat16), (1, torch.contiguous_format, torch.bfloat16),
         (1, torch.channels_last, torch.float32), (2, torch.channels_last, torch.bfloat16),
         (3, torch.channels_last, torch.bfloat16)]  # (input size, layout, dtype)
for threads, size, layout, dtype in [(t, *case) for t in (1, 2) for case in CASES]:
    torch.set_num_threads(threads)
    x = torch.randn(8, 64, size, size).to(dtype).to(memory_format=layout)
    grad_out = torch.randn(8, 64, (size + 1) // 2, (size + 1) // 2).to(dtype).to(memory_format=layout)
    weight = torch.randn(64, 64, 3, 3).to(dtype).to(memory_format=layout)
    first, differ, nonfinite = None, 0, 0
    for _ in range(100):
        _, grad_w, _ = torch.ops.aten.convolution_backward(grad_out, x, weight, None, [2, 2], [1, 1], [1, 1], False,
                                                           [0, 0], 1, [False, True, False])
        first = grad_w.clone() if first is None else first
        differ += not torch.equal(grad_w, first)
        nonfinite += not torch.isfinite(grad_w).all()
    print(f"{threads} thread(s), input {size}x{size}, {str(layout).split('.')[-1]}, {str(dtype).split('.')[-1]}: "
          f"{differ} of 100 differ from the first, {nonfinite} not finite")
