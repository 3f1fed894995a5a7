from .resnet import build_resnet_fpn_backbone_by_width, make_resnet_stages  # noqa: F401
