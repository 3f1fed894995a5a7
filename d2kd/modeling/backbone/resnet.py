"""ResNet stages at any width, for small CPU-trainable teachers and students.

Detectron2's ``ResNet.make_default_stages`` hard-codes the standard widths (64 … 2048), and its
yacs builder insists on 64 channels for R18/R34. A distillation student is often a *narrow*
ResNet, so this builds the same stages (Detectron2's own ``BasicBlock``/``BottleneckBlock``,
hence the same module names and checkpoint layout) with every width scaled from ``width``.
"""
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock, ResNet

_BLOCKS_PER_STAGE = {
    10: [1, 1, 1, 1],
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
}


def make_resnet_stages(*, depth: int, width: int = 64, norm: str = "FrozenBN", stride_in_1x1=True):
    """
    Stages res2..res5 of a ResNet whose stem has ``width`` channels (64 = the standard ResNet).

    Depth < 50 uses BasicBlocks with outputs [w, 2w, 4w, 8w]; depth >= 50 uses BottleneckBlocks
    with outputs [4w, 8w, 16w, 32w] and bottlenecks [w, 2w, 4w, 8w], exactly like
    ``ResNet.make_default_stages`` at ``width=64``. Pair it with ``BasicStem(out_channels=width)``.
    """
    if depth not in _BLOCKS_PER_STAGE:
        raise ValueError(f"ResNet depth must be one of {sorted(_BLOCKS_PER_STAGE)}, got {depth}")
    if width <= 0:
        raise ValueError(f"ResNet width must be positive, got {width}")
    basic = depth < 50
    expansion = 1 if basic else 4
    out_channels = [width * expansion * 2**i for i in range(4)]
    in_channels = [width] + out_channels[:-1]
    stages = []
    for i, (n, c_in, c_out) in enumerate(zip(_BLOCKS_PER_STAGE[depth], in_channels, out_channels)):
        kwargs = {} if basic else {"bottleneck_channels": c_out // 4, "stride_in_1x1": stride_in_1x1}
        stages.append(
            ResNet.make_stage(
                block_class=BasicBlock if basic else BottleneckBlock,
                num_blocks=n,
                stride_per_block=[1 if i == 0 else 2] + [1] * (n - 1),
                in_channels=c_in,
                out_channels=c_out,
                norm=norm,
                **kwargs,
            )
        )
    return stages


def resnet_out_channels(*, depth: int, width: int = 64) -> int:
    """Channels of res5 for :func:`make_resnet_stages` (what an FPN top block takes in)."""
    return width * (1 if depth < 50 else 4) * 8
